import { X509Certificate } from "node:crypto";
import { join } from "node:path";
import { K8slabError } from "../errors.js";
import { listDir, pkiDir, readTextIfExists } from "./store.js";

export interface ExpiryWarning {
  /** Certificate name, e.g. "ca" or "kubelet-server-minion1". */
  name: string;
  notAfter: Date;
  /** Whole days left; negative once expired. */
  daysLeft: number;
}

export interface CheckPkiExpiryOptions {
  now?: Date;
  /** Warn for certificates that expire within this many days (default 30). */
  withinDays?: number;
}

const DAY_MS = 24 * 60 * 60 * 1000;

/**
 * Certificates in `<labDir>/pki` that expire within `withinDays` (or have expired), soonest
 * first. Reads the certificates themselves, not the manifest; no PKI means no warnings.
 */
export async function checkPkiExpiry(
  labDir: string,
  options: CheckPkiExpiryOptions = {},
): Promise<ExpiryWarning[]> {
  const now = options.now ?? new Date();
  const withinMs = (options.withinDays ?? 30) * DAY_MS;
  const dir = pkiDir(labDir);
  const candidates = (await listDir(dir)).filter(
    (f) => f.endsWith(".pem") && !f.endsWith("-key.pem"),
  );
  const warnings: ExpiryWarning[] = [];
  for (const file of candidates) {
    const text = await readTextIfExists(join(dir, file));
    if (text === undefined || !text.includes("-----BEGIN CERTIFICATE-----")) continue;
    let notAfter: Date;
    try {
      notAfter = new Date(new X509Certificate(text).validTo);
    } catch (error) {
      throw new K8slabError(
        `${join(dir, file)} is not a readable certificate (cut short or damaged)`,
        {
          hint: "render the lab again (k8slab render): it re-issues a damaged certificate, or says how to restore the CA",
          cause: error,
        },
      );
    }
    const leftMs = notAfter.getTime() - now.getTime();
    if (leftMs < withinMs) {
      warnings.push({
        name: file.slice(0, -".pem".length),
        notAfter,
        daysLeft: Math.floor(leftMs / DAY_MS),
      });
    }
  }
  return warnings.sort(
    (a, b) => a.notAfter.getTime() - b.notAfter.getTime() || a.name.localeCompare(b.name),
  );
}
