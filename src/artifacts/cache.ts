import { createHash, randomBytes } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { homedir } from "node:os";
import { basename, join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import pRetry, { AbortError } from "p-retry";
import { z } from "zod";
import { K8slabError } from "../errors.js";
import { writeFileAtomic } from "../lab-dir/files.js";
import { hashingStream } from "../util/hash-stream.js";
import { readJsonFile } from "../lab-dir/json-file.js";
import { labDownloads, type ArtifactDownload } from "../lab/artifact-variants.js";
import type { Lab } from "../lab/schema.js";

/** One file to download: an artifact, or one architecture's file of it (served as `name`). */
export type Artifact = Pick<ArtifactDownload, "url" | "sha256">;

/** The per-user cache: one download per laptop, shared by every lab. */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.K8SLAB_CACHE) return env.K8SLAB_CACHE;
  const base = env.XDG_CACHE_HOME || join(env.HOME || homedir(), ".cache");
  return join(base, "k8slab");
}

/** Where a verified artifact lives: keyed by checksum, named like its URL. */
export function artifactPath(cache: string, sha256: string, url: string): string {
  return join(cache, "artifacts", sha256, basename(new URL(url).pathname) || "artifact");
}

export interface PullProgress {
  name: string;
  /**
   * cached: in the cache and its sha256 verified again; damaged: the cached copy failed that
   * check and is fetched again; recorded: no published checksum, so the first download's
   * sha256 was recorded (`sha256`) and every later use is verified against it; resolved: an image
   * tag was resolved to a digest (`sha256`), recorded so that every later pull gets the same image.
   */
  event: "cached" | "damaged" | "start" | "progress" | "done" | "retry" | "recorded" | "resolved";
  received?: number;
  total?: number;
  message?: string;
  sha256?: string;
}

/** How an artifact is verified, decided for every artifact before any download starts. */
export type Verification =
  { by: "lab"; sha256: string } | { by: "pin"; sha256: string } | { by: "first-download" };

export interface PulledArtifact {
  name: string;
  url: string;
  sha256: string;
  path: string;
  size: number;
  /** false when it was already in the cache. */
  downloaded: boolean;
  /** true when its checksum was recorded on a first download rather than given in the lab file. */
  pinned: boolean;
  /** true when that recording happened in this pull: tell the user the sha256. */
  recorded: boolean;
}

export interface PullOptions {
  cache: string;
  /** How to name the lab in hints (what the user typed: a built-in name or a file). */
  labRef?: string | undefined;
  onProgress?: (p: PullProgress) => void;
  /** Attempts per artifact for transient failures (network errors, 5xx). */
  attempts?: number;
  /** Abort a download that receives nothing for this long. */
  stallMs?: number;
  signal?: AbortSignal;
}

const PINS_FILE = "pins.json";
const SHA256 = /^[0-9a-f]{64}$/;
const pinsSchema = z.record(z.string(), z.string().regex(SHA256, "not a sha256"));

/** The sha256 recorded on first downloads, by URL. */
export async function readPins(cache: string): Promise<Record<string, string>> {
  const file = join(cache, PINS_FILE);
  return (
    (await readJsonFile(file, pinsSchema, {
      what: "the sha256 recorded on first downloads",
      fix: `remove ${file}: each artifact without a sha256 in its lab file is recorded again on its next download`,
    })) ?? {}
  );
}

export async function recordPin(cache: string, url: string, sha256: string): Promise<void> {
  await mkdir(cache, { recursive: true });
  const pins = { ...(await readPins(cache)), [url]: sha256 };
  await writeFileAtomic(join(cache, PINS_FILE), `${JSON.stringify(pins, null, 2)}\n`, 0o644);
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  await pipeline(createReadStream(path), hash);
  return hash.digest("hex");
}

/**
 * How each artifact of the lab will be verified: the sha256 in the lab file, else the one
 * recorded on an earlier first download, else it is trusted on this first download and recorded.
 */
export async function planVerification(
  lab: Pick<Lab, "artifacts" | "nodes">,
  cache: string,
): Promise<{ name: string; artifact: Artifact; verification: Verification }[]> {
  const pins = await readPins(cache);
  return labDownloads(lab).map((artifact) => {
    const name = artifact.name;
    const pinned = pins[artifact.url];
    const verification: Verification = artifact.sha256
      ? { by: "lab", sha256: artifact.sha256 }
      : pinned
        ? { by: "pin", sha256: pinned }
        : { by: "first-download" };
    return { name, artifact, verification };
  });
}

/**
 * Download every artifact of a lab once into the cache, verifying each checksum; a cached copy is
 * verified again on every use and fetched again when damaged. How every artifact is verified is
 * decided before the first download starts.
 */
export async function pullArtifacts(lab: Lab, options: PullOptions): Promise<PulledArtifact[]> {
  const plans = await planVerification(lab, options.cache);
  await mkdir(join(options.cache, "artifacts"), { recursive: true });
  const labRef = options.labRef ?? lab.name;
  const results: PulledArtifact[] = [];
  for (const { name, artifact, verification } of plans) {
    results.push(await pullOne(name, artifact, verification, { ...options, labRef }));
  }
  return results;
}

async function pullOne(
  name: string,
  artifact: Artifact,
  verification: Verification,
  options: PullOptions & { labRef: string },
): Promise<PulledArtifact> {
  const { cache, labRef } = options;
  const report = options.onProgress ?? (() => {});
  const expected = verification.by === "first-download" ? undefined : verification.sha256;
  const pinned = verification.by !== "lab";
  if (expected) {
    const path = artifactPath(cache, expected, artifact.url);
    const size = await sizeOf(path);
    if (size !== undefined) {
      const actual = await sha256File(path);
      if (actual === expected) {
        report({ name, event: "cached", total: size });
        return {
          name,
          url: artifact.url,
          sha256: expected,
          path,
          size,
          downloaded: false,
          pinned,
          recorded: false,
        };
      }
      report({ name, event: "damaged", message: `sha256 ${actual}, expected ${expected}` });
      await rm(path, { force: true });
    }
  }
  report({ name, event: "start" });
  const tmp = join(cache, "artifacts", `.${name}.${randomBytes(4).toString("hex")}.part`);
  try {
    const { sha256, size } = await pRetry(() => download(name, artifact.url, tmp, options), {
      retries: Math.max(0, (options.attempts ?? 3) - 1),
      minTimeout: 1_000,
      maxTimeout: 10_000,
      signal: options.signal,
      onFailedAttempt: ({ error, attemptNumber, retriesLeft }) => {
        if (retriesLeft > 0) {
          report({
            name,
            event: "retry",
            message: `attempt ${attemptNumber} failed: ${describe(error)}`,
          });
        }
      },
    }).catch((error: unknown) => {
      if (error instanceof K8slabError || options.signal?.aborted) throw error;
      throw new K8slabError(
        `cannot download artifact ${name} from ${artifact.url}: ${describe(error)}`,
        {
          hint: `check the network (and HTTPS_PROXY), then run k8slab cache pull ${labRef}`,
          cause: error,
        },
      );
    });
    if (expected && sha256 !== expected) {
      throw new K8slabError(
        `artifact ${name} is corrupt: ${artifact.url} has sha256 ${sha256}, expected ${expected}`,
        {
          hint: artifact.sha256
            ? `the download was damaged or the URL serves another file; run k8slab cache pull ${labRef} again, or check url and sha256 in the lab file`
            : `the file changed since its sha256 was recorded on the first download; check the URL (better: put its published sha256 in the lab file), or, to accept the new file, remove its line from ${join(cache, PINS_FILE)} and run k8slab cache pull ${labRef}`,
        },
      );
    }
    const path = artifactPath(cache, sha256, artifact.url);
    await mkdir(join(cache, "artifacts", sha256), { recursive: true });
    await rename(tmp, path);
    if (!expected) await recordPin(cache, artifact.url, sha256);
    report({ name, event: "done", received: size, total: size });
    if (!expected) report({ name, event: "recorded", sha256 });
    return {
      name,
      url: artifact.url,
      sha256,
      path,
      size,
      downloaded: true,
      pinned,
      recorded: !expected,
    };
  } finally {
    await rm(tmp, { force: true });
  }
}

/** fetch() hides the reason in `cause` (ENOTFOUND, ECONNREFUSED, ...). */
function describe(error: unknown): string {
  const e = error as { message?: string; cause?: { code?: string; message?: string } };
  const cause = e.cause?.code ?? e.cause?.message;
  return `${e.message ?? String(error)}${cause ? ` (${cause})` : ""}`;
}

async function sizeOf(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).size;
  } catch {
    return undefined;
  }
}

/** One attempt: stream to `tmp`, hashing on the way. Client errors (4xx) are not retried. */
async function download(
  name: string,
  url: string,
  tmp: string,
  options: PullOptions,
): Promise<{ sha256: string; size: number }> {
  const stallMs = options.stallMs ?? 60_000;
  const controller = new AbortController();
  const onAbort = () => controller.abort(options.signal?.reason);
  options.signal?.addEventListener("abort", onAbort, { once: true });
  let timer = setTimeout(() => controller.abort(new Error(`no data for ${stallMs} ms`)), stallMs);
  const resetTimer = () => {
    clearTimeout(timer);
    timer = setTimeout(() => controller.abort(new Error(`no data for ${stallMs} ms`)), stallMs);
  };
  try {
    const response = await fetch(url, { signal: controller.signal, redirect: "follow" });
    if (!response.ok || !response.body) {
      const error = new K8slabError(`artifact ${name}: ${url} answered HTTP ${response.status}`, {
        hint: "check the artifact's url in the lab file",
      });
      if (response.status >= 400 && response.status < 500) throw new AbortError(error);
      throw error;
    }
    const total = Number(response.headers.get("content-length")) || undefined;
    let lastReport = 0;
    const meter = hashingStream((received) => {
      resetTimer();
      if (received - lastReport >= 1 << 20 || received === total) {
        lastReport = received;
        options.onProgress?.({ name, event: "progress", received, ...(total ? { total } : {}) });
      }
    });
    await pipeline(
      Readable.fromWeb(response.body as WebReadableStream),
      meter,
      createWriteStream(tmp),
    );
    const received = meter.bytes();
    if (total !== undefined && received !== total) {
      throw new Error(`artifact ${name}: received ${received} of ${total} bytes`);
    }
    return { sha256: meter.sha256(), size: received };
  } catch (error) {
    if (error instanceof AbortError) throw error;
    if (controller.signal.aborted && options.signal?.aborted)
      throw new AbortError(String(options.signal.reason));
    throw error instanceof Error ? error : new Error(String(error));
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
  }
}
