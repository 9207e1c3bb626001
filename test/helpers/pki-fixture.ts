import { X509Certificate } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { join, relative } from "node:path";
import type { PkiTopology } from "../../src/pki/index.js";

/** The three-node lab of seed 004 at the default VirtualBox host-only addresses. */
export function threeNodeTopology(overrides: Partial<PkiTopology> = {}): PkiTopology {
  return {
    labName: "three-node",
    clusterDomain: "cluster.local",
    apiServiceIp: "10.0.0.1",
    apiServerUrl: "https://192.168.56.165:6443",
    nodes: [
      { name: "master", ip: "192.168.56.165", roles: ["etcd", "control-plane"] },
      { name: "minion1", ip: "192.168.56.166", roles: ["etcd", "worker"] },
      { name: "minion2", ip: "192.168.56.167", roles: ["etcd", "worker"] },
    ],
    validityDays: 365,
    ...overrides,
  };
}

/** The same topology with one node's IP changed. */
export function withNodeIp(topology: PkiTopology, name: string, ip: string): PkiTopology {
  return {
    ...topology,
    nodes: topology.nodes.map((n) => (n.name === name ? { ...n, ip } : n)),
  };
}

export interface CertFacts {
  subject: { commonName: string; organizations: string[] };
  issuer: string;
  dnsSans: string[];
  ipSans: string[];
  extKeyUsage: string[];
  isCa: boolean;
  notBefore: Date;
  notAfter: Date;
  serialHex: string;
  modulusBits: number | undefined;
  keyType: string | undefined;
  curve: string | undefined;
}

const EKU_NAMES: Record<string, string> = {
  "1.3.6.1.5.5.7.3.1": "serverAuth",
  "1.3.6.1.5.5.7.3.2": "clientAuth",
};

/** What a certificate says, read by Node's OpenSSL (not by forge, which wrote it). */
export function certFacts(pem: string): CertFacts {
  const x509 = new X509Certificate(pem);
  const subjectLines = x509.subject.split("\n");
  const sans = (x509.subjectAltName ?? "").split(", ").filter((s) => s !== "");
  return {
    subject: {
      commonName: subjectLines.find((l) => l.startsWith("CN="))?.slice(3) ?? "",
      organizations: subjectLines.filter((l) => l.startsWith("O=")).map((l) => l.slice(2)),
    },
    issuer: x509.issuer,
    dnsSans: sans.filter((s) => s.startsWith("DNS:")).map((s) => s.slice(4)),
    ipSans: sans.filter((s) => s.startsWith("IP Address:")).map((s) => s.slice(11)),
    extKeyUsage: (x509.keyUsage ?? []).map((oid) => EKU_NAMES[oid] ?? oid),
    isCa: x509.ca,
    notBefore: new Date(x509.validFrom),
    notAfter: new Date(x509.validTo),
    serialHex: x509.serialNumber,
    modulusBits: x509.publicKey.asymmetricKeyDetails?.modulusLength,
    keyType: x509.publicKey.asymmetricKeyType,
    curve: x509.publicKey.asymmetricKeyDetails?.namedCurve,
  };
}

/** Every file under `dir` (relative path -> bytes), for before/after comparisons. */
export async function snapshotTree(dir: string): Promise<Map<string, Buffer>> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  const files = new Map<string, Buffer>();
  for (const entry of entries) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath, entry.name);
    files.set(relative(dir, path), await readFile(path));
  }
  return files;
}

/** Relative paths whose bytes differ, appeared or disappeared between two snapshots. */
export function changedFiles(before: Map<string, Buffer>, after: Map<string, Buffer>): string[] {
  const names = new Set([...before.keys(), ...after.keys()]);
  return [...names]
    .filter((name) => {
      const a = before.get(name);
      const b = after.get(name);
      return a === undefined || b === undefined || !a.equals(b);
    })
    .sort();
}
