import { createHash, createPrivateKey, type KeyObject, X509Certificate } from "node:crypto";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { K8slabError } from "../errors.js";
import { planNodeBundle } from "./bundles.js";
import type { CertSpec, IssuedSpec } from "./cert-specs.js";
import {
  CA_NAME,
  caCommonName,
  ETCD_CA_NAME,
  planCertificates,
  SERVICE_ACCOUNT,
  specDifferences,
  type CaName,
} from "./cert-specs.js";
import type { CertificateAuthority, KeyPairPem } from "./certs.js";
import {
  createCaCertificate,
  generateEcKeyPair,
  generateRsaKeyPair,
  issueCertificate,
  loadCertificateAuthority,
  publicKeyPemOf,
  validityFrom,
} from "./certs.js";
import { planKubeconfigs, renderKubeconfig } from "./kubeconfig.js";
import { issuedSpecOf } from "./read-cert.js";
import type { CertRecord, Manifest } from "./store.js";
import {
  certFile,
  ensureDir,
  keyFile,
  listDir,
  MANIFEST_FILE,
  nodesDir,
  pkiDir,
  PUBLIC_MODE,
  readManifest,
  readTextIfExists,
  removeFile,
  renderManifest,
  SECRET_MODE,
  writeIfChanged,
} from "./store.js";
import type { PkiTopology } from "./topology.js";
import { validateTopology } from "./topology.js";

export interface PkiResult {
  /** `<labDir>/pki` */
  dir: string;
  /** Names newly issued ("ca", "service-account" and certificate names; first run: all). */
  created: string[];
  /** Existing certificates re-issued from the same CA, with a human reason. */
  reissued: { name: string; reason: string }[];
  reused: string[];
  /** Certificates of nodes (or roles) no longer in the topology. */
  removed: string[];
}

export interface EnsurePkiOptions {
  now?: Date;
}

const DAY_MS = 24 * 60 * 60 * 1000;
/** The CA outlives the certificates it signs, so renewing a leaf never needs a new CA. */
const CA_VALIDITY_FACTOR = 10;
const RENEW_WITHIN_DAYS = 30;

/** Renew 30 days before expiry, or after two thirds of the lifetime for short-lived labs. */
export function renewWithinMs(validityDays: number): number {
  return Math.min(RENEW_WITHIN_DAYS, validityDays / 3) * DAY_MS;
}

interface Existing {
  certPem: string;
  keyPem: string;
}

type Decision =
  | { kind: "reuse"; existing: Existing; record: CertRecord }
  | { kind: "create" }
  | { kind: "reissue"; reason: string };

function fingerprint(x509: X509Certificate): string {
  return x509.fingerprint256;
}

function isoDate(date: Date): string {
  return date.toISOString().slice(0, 10);
}

function missingCaKeyError(dir: string, what: string, ca: CaName = CA_NAME): K8slabError {
  return new K8slabError(
    `${what} in ${dir}, so no certificate ${ca === CA_NAME ? "of this lab" : "for etcd"} can be issued or re-issued`,
    {
      hint:
        `restore ${keyFile(ca)} (and ${certFile(ca)}) from a backup into ${dir}; or, to start over with a new ` +
        `CA, remove ${dir} and run \`k8slab provision\` so every VM receives the new certificates`,
    },
  );
}

/**
 * The lab CA from its files, or a K8slabError naming the unreadable one and the way back. The
 * CA key exists nowhere else, so it is never replaced; ca.pem has a copy in every node bundle.
 */
async function readCa(
  dir: string,
  name: CaName,
  certPem: string,
  keyPem: string,
): Promise<CertificateAuthority> {
  const certPath = join(dir, certFile(name));
  const keyPath = join(dir, keyFile(name));
  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch (error) {
    throw new K8slabError(`${keyPath} is not a readable private key (cut short or damaged)`, {
      hint:
        `restore ${keyFile(name)} from a backup: it exists only here (it never leaves this host) and ` +
        `every certificate it signed depends on it; k8slab never replaces it`,
      cause: error,
    });
  }
  try {
    return loadCertificateAuthority(certPem, keyPem);
  } catch (error) {
    const copy = await intactCaCopy(dir, name, key);
    throw new K8slabError(`${certPath} is not a readable certificate (cut short or damaged)`, {
      hint: copy
        ? `restore it from a node bundle's copy: cp ${copy} ${certPath}`
        : `restore ${certFile(name)} from a backup, or copy it from a VM of the lab (every VM has one)`,
      cause: error,
    });
  }
}

/** A copy of a CA's certificate in a node bundle that still reads and belongs to its key. */
async function intactCaCopy(
  dir: string,
  name: CaName,
  key: KeyObject,
): Promise<string | undefined> {
  for (const node of await listDir(join(dir, "nodes"))) {
    const copy = join(dir, "nodes", node, certFile(name));
    try {
      const pem = await readTextIfExists(copy);
      if (pem !== undefined && new X509Certificate(pem).checkPrivateKey(key)) return copy;
    } catch {
      // Damaged too: try the next node's.
    }
  }
  return undefined;
}

/**
 * A CA of the lab from its files, or a new one. The lab's CA is never re-created once anything
 * it signed exists; etcd's own CA is created when a lab from before it had none (its
 * certificates are then re-issued from it).
 */
async function loadOrCreateCa(
  dir: string,
  name: CaName,
  topology: PkiTopology,
  manifest: Manifest | undefined,
  now: Date,
  result: PkiResult,
  takeKeys: KeySource,
): Promise<CertificateAuthority> {
  const [certPem, keyPem] = await Promise.all([
    readTextIfExists(join(dir, certFile(name))),
    readTextIfExists(join(dir, keyFile(name))),
  ]);
  if (certPem !== undefined && keyPem !== undefined) {
    const ca = await readCa(dir, name, certPem, keyPem);
    if (!ca.x509.checkPrivateKey(ca.key)) {
      throw new K8slabError(
        `${join(dir, keyFile(name))} does not belong to ${join(dir, certFile(name))}`,
        {
          hint: `restore the matching pair from a backup, or remove ${dir} to start over with a new CA`,
        },
      );
    }
    const notAfter = new Date(ca.x509.validTo);
    if (notAfter <= now) {
      throw new K8slabError(`the lab's ${name} in ${dir} expired on ${isoDate(notAfter)}`, {
        hint: `remove ${dir} and run \`k8slab provision\` so every VM receives certificates from a new CA`,
      });
    }
    result.reused.push(name);
    return ca;
  }
  if (keyPem === undefined && certPem !== undefined) {
    throw missingCaKeyError(dir, `${keyFile(name)} is missing but ${certFile(name)} exists`, name);
  }
  if (keyPem !== undefined) {
    throw missingCaKeyError(dir, `${certFile(name)} is missing but ${keyFile(name)} exists`, name);
  }
  if (name === CA_NAME) {
    const leftovers = (await listDir(dir)).filter((f) => f.endsWith(".pem"));
    const recorded = Object.keys(manifest?.certs ?? {});
    if (leftovers.length > 0 || recorded.length > 0) {
      throw missingCaKeyError(
        dir,
        `ca.pem and ca-key.pem are missing but ${Math.max(leftovers.length, recorded.length)} other PKI files exist`,
      );
    }
  }
  const keys = await takeKeys();
  const caValidity = validityFrom(now, topology.validityDays * CA_VALIDITY_FACTOR);
  const newCertPem = createCaCertificate(
    keys,
    { commonName: caCommonName(topology, name), organizations: ["k8slab"] },
    caValidity,
  );
  await writeIfChanged(join(dir, keyFile(name)), keys.privateKeyPem, SECRET_MODE);
  await writeIfChanged(join(dir, certFile(name)), newCertPem, PUBLIC_MODE);
  result.created.push(name);
  return loadCertificateAuthority(newCertPem, keys.privateKeyPem);
}

async function decide(
  dir: string,
  spec: CertSpec,
  record: CertRecord | undefined,
  ca: CertificateAuthority,
  now: Date,
  validityDays: number,
): Promise<Decision> {
  const [certPem, keyPem] = await Promise.all([
    readTextIfExists(join(dir, certFile(spec.name))),
    readTextIfExists(join(dir, keyFile(spec.name))),
  ]);
  if (certPem === undefined && keyPem === undefined && record === undefined) {
    return { kind: "create" };
  }
  const reissue = (reason: string): Decision => ({ kind: "reissue", reason });
  if (certPem === undefined) return reissue(`${certFile(spec.name)} is missing`);
  if (keyPem === undefined) return reissue(`${keyFile(spec.name)} is missing`);

  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(certPem);
  } catch {
    return reissue(`${certFile(spec.name)} is not a readable certificate`);
  }
  // Not in the manifest (it was lost): what the certificate itself says takes its place.
  record ??= recordOf(spec.node, issuedSpecOf(certPem), x509);
  if (fingerprint(x509) !== record.sha256) {
    return reissue(
      `${certFile(spec.name)} differs from the certificate recorded in ${MANIFEST_FILE}`,
    );
  }
  if (!x509.checkIssued(ca.x509) || !x509.verify(ca.x509.publicKey)) {
    return reissue(`not signed by the ${spec.issuer === CA_NAME ? "lab CA" : "etcd CA"}`);
  }
  try {
    if (!x509.checkPrivateKey(createPrivateKey(keyPem))) {
      return reissue(`${keyFile(spec.name)} does not match the certificate`);
    }
  } catch {
    return reissue(`${keyFile(spec.name)} is not a readable private key`);
  }
  const changes = specDifferences(record, spec);
  if (changes.length > 0) return reissue(changes.join("; "));
  const notAfter = new Date(x509.validTo);
  const left = notAfter.getTime() - now.getTime();
  if (left <= 0) return reissue(`expired on ${isoDate(notAfter)}`);
  if (left < renewWithinMs(validityDays)) {
    return reissue(`expires in ${Math.floor(left / DAY_MS)} days (${isoDate(notAfter)})`);
  }
  return { kind: "reuse", existing: { certPem, keyPem }, record };
}

function recordFor(spec: CertSpec, certPem: string): CertRecord {
  return recordOf(spec.node, spec, new X509Certificate(certPem));
}

function recordOf(node: string | undefined, spec: IssuedSpec, x509: X509Certificate): CertRecord {
  return {
    ...(node === undefined ? {} : { node }),
    subject: {
      commonName: spec.subject.commonName,
      organizations: [...spec.subject.organizations],
    },
    sans: { dns: [...spec.sans.dns], ips: [...spec.sans.ips] },
    keyUsage: [...spec.keyUsage],
    extKeyUsage: [...spec.extKeyUsage],
    serial: x509.serialNumber.toLowerCase(),
    notBefore: new Date(x509.validFrom).toISOString(),
    notAfter: new Date(x509.validTo).toISOString(),
    sha256: fingerprint(x509),
  };
}

function caRecord(
  ca: CertificateAuthority,
  topology: PkiTopology,
  name: CaName = CA_NAME,
): Manifest["ca"] {
  return {
    subject: { commonName: caCommonName(topology, name), organizations: ["k8slab"] },
    serial: ca.x509.serialNumber.toLowerCase(),
    notBefore: new Date(ca.x509.validFrom).toISOString(),
    notAfter: new Date(ca.x509.validTo).toISOString(),
    sha256: fingerprint(ca.x509),
  };
}

async function ensureServiceAccount(
  dir: string,
  result: PkiResult,
  takeKeys: KeySource,
): Promise<KeyPairPem> {
  const publicPath = join(dir, certFile(SERVICE_ACCOUNT));
  const privatePath = join(dir, keyFile(SERVICE_ACCOUNT));
  const [publicKeyPem, privateKeyPem] = await Promise.all([
    readTextIfExists(publicPath),
    readTextIfExists(privatePath),
  ]);
  let reason: string | undefined;
  if (publicKeyPem !== undefined && privateKeyPem !== undefined) {
    try {
      if (publicKeyPemOf(privateKeyPem) === publicKeyPem) {
        result.reused.push(SERVICE_ACCOUNT);
        return { publicKeyPem, privateKeyPem };
      }
      reason = `${certFile(SERVICE_ACCOUNT)} does not match ${keyFile(SERVICE_ACCOUNT)}`;
    } catch {
      reason = `${keyFile(SERVICE_ACCOUNT)} is not a readable private key`;
    }
  } else if (publicKeyPem !== undefined || privateKeyPem !== undefined) {
    reason = `${publicKeyPem === undefined ? certFile(SERVICE_ACCOUNT) : keyFile(SERVICE_ACCOUNT)} is missing`;
  }
  const keys = await takeKeys();
  await writeIfChanged(privatePath, keys.privateKeyPem, SECRET_MODE);
  await writeIfChanged(publicPath, keys.publicKeyPem, PUBLIC_MODE);
  if (reason === undefined) result.created.push(SERVICE_ACCOUNT);
  else result.reissued.push({ name: SERVICE_ACCOUNT, reason: `${reason}; new key pair` });
  return keys;
}

type KeySource = () => Promise<KeyPairPem>;

/**
 * Hands out RSA key pairs (the CA's and the service account's). On a fresh PKI both are needed,
 * so their generations start at once and run in parallel on libuv's thread pool.
 */
function keySource(prestart: number): KeySource {
  const ready = Array.from({ length: prestart }, () => {
    const promise = generateRsaKeyPair();
    promise.catch(() => undefined); // reported to whoever takes it; never unhandled
    return promise;
  });
  return () => ready.shift() ?? generateRsaKeyPair();
}

/**
 * Make `<labDir>/pki` match the topology: keep the CA and every certificate whose spec is
 * unchanged and that is not close to expiry (their bytes do not change), re-issue from the same
 * CA what changed, remove what belongs to nodes no longer there, and refresh kubeconfigs and the
 * per-node bundles.
 */
export async function ensurePki(
  labDir: string,
  topology: PkiTopology,
  options: EnsurePkiOptions = {},
): Promise<PkiResult> {
  validateTopology(topology);
  const now = options.now ?? new Date();
  const dir = pkiDir(labDir);
  await ensureDir(dir);
  const manifest = await readManifest(dir);
  const result: PkiResult = { dir, created: [], reissued: [], reused: [], removed: [] };
  const specs = planCertificates(topology);

  const fresh = manifest === undefined && (await listDir(dir)).every((f) => !f.endsWith(".pem"));
  // RSA keys: the two CAs and the service account's.
  const takeKeys = keySource(fresh ? 3 : 0);
  const ca = await loadOrCreateCa(dir, CA_NAME, topology, manifest, now, result, takeKeys);
  const etcdCa = await loadOrCreateCa(dir, ETCD_CA_NAME, topology, manifest, now, result, takeKeys);
  const cas: Record<CaName, CertificateAuthority> = { [CA_NAME]: ca, [ETCD_CA_NAME]: etcdCa };

  const decisions = await Promise.all(
    specs.map((spec) =>
      decide(dir, spec, manifest?.certs[spec.name], cas[spec.issuer], now, topology.validityDays),
    ),
  );
  const leafValidity = (issuer: CaName) =>
    validityFrom(now, topology.validityDays, new Date(cas[issuer].x509.validTo));
  const pems = new Map<string, Existing>();
  const records: Record<string, CertRecord> = {};
  const [serviceAccount] = await Promise.all([
    ensureServiceAccount(dir, result, takeKeys),
    ...specs.map(async (spec, i) => {
      const decision = decisions[i]!;
      if (decision.kind === "reuse") {
        pems.set(spec.name, decision.existing);
        records[spec.name] = decision.record;
        result.reused.push(spec.name);
        return;
      }
      const keys = generateEcKeyPair();
      const certPem = issueCertificate(
        spec,
        keys.publicKeyPem,
        cas[spec.issuer],
        leafValidity(spec.issuer),
      );
      await writeIfChanged(join(dir, keyFile(spec.name)), keys.privateKeyPem, SECRET_MODE);
      await writeIfChanged(join(dir, certFile(spec.name)), certPem, PUBLIC_MODE);
      pems.set(spec.name, { certPem, keyPem: keys.privateKeyPem });
      records[spec.name] = recordFor(spec, certPem);
      if (decision.kind === "create") result.created.push(spec.name);
      else result.reissued.push({ name: spec.name, reason: decision.reason });
    }),
  ]);

  const planned = new Set(specs.map((s) => s.name));
  for (const name of Object.keys(manifest?.certs ?? {})) {
    if (planned.has(name)) continue;
    await removeFile(join(dir, certFile(name)));
    await removeFile(join(dir, keyFile(name)));
    result.removed.push(name);
  }

  const orderedRecords = Object.fromEntries(specs.map((s) => [s.name, records[s.name]!]));
  const newManifest: Manifest = {
    version: 1,
    ca: caRecord(ca, topology),
    etcdCa: caRecord(etcdCa, topology, ETCD_CA_NAME),
    serviceAccount: {
      publicKeySha256: createHash("sha256").update(serviceAccount.publicKeyPem).digest("hex"),
    },
    certs: orderedRecords,
  };
  await writeIfChanged(join(dir, MANIFEST_FILE), renderManifest(newManifest), PUBLIC_MODE);

  const files = new Map<string, { content: string; mode: number }>();
  files.set(certFile(CA_NAME), { content: ca.certPem, mode: PUBLIC_MODE });
  files.set(certFile(ETCD_CA_NAME), { content: etcdCa.certPem, mode: PUBLIC_MODE });
  for (const [name, pem] of pems) {
    files.set(certFile(name), { content: pem.certPem, mode: PUBLIC_MODE });
    files.set(keyFile(name), { content: pem.keyPem, mode: SECRET_MODE });
  }
  files.set(certFile(SERVICE_ACCOUNT), { content: serviceAccount.publicKeyPem, mode: PUBLIC_MODE });
  files.set(keyFile(SERVICE_ACCOUNT), { content: serviceAccount.privateKeyPem, mode: SECRET_MODE });
  const kubeconfigs = planKubeconfigs(topology);
  for (const plan of kubeconfigs) {
    const pem = pems.get(plan.cert)!;
    const content = renderKubeconfig({
      clusterName: topology.labName,
      server: plan.server,
      userName: plan.userName,
      caPem: ca.certPem,
      certPem: pem.certPem,
      keyPem: pem.keyPem,
    });
    files.set(plan.file, { content, mode: SECRET_MODE });
  }

  // Every file in the pki directory gets its mode checked; only kubeconfigs may change bytes.
  await Promise.all(
    [...files].map(([file, { content, mode }]) => writeIfChanged(join(dir, file), content, mode)),
  );
  const wantedKubeconfigs = new Set(kubeconfigs.map((k) => k.file));
  for (const file of await listDir(dir)) {
    if (file.endsWith(".kubeconfig") && !wantedKubeconfigs.has(file)) {
      await removeFile(join(dir, file));
    }
  }

  await syncBundles(labDir, topology, files);
  return inPlanOrder(result, [CA_NAME, ETCD_CA_NAME, ...specs.map((s) => s.name), SERVICE_ACCOUNT]);
}

/** Keys are issued as they arrive from the thread pool; report them in a stable order. */
function inPlanOrder(result: PkiResult, order: readonly string[]): PkiResult {
  const rank = (name: string): number => {
    const at = order.indexOf(name);
    return at === -1 ? order.length : at;
  };
  const byName = (a: string, b: string): number => rank(a) - rank(b) || a.localeCompare(b);
  return {
    dir: result.dir,
    created: [...result.created].sort(byName),
    reissued: [...result.reissued].sort((a, b) => byName(a.name, b.name)),
    reused: [...result.reused].sort(byName),
    removed: [...result.removed].sort(),
  };
}

async function syncBundles(
  labDir: string,
  topology: PkiTopology,
  files: ReadonlyMap<string, { content: string; mode: number }>,
): Promise<void> {
  const root = nodesDir(labDir);
  await ensureDir(root);
  const wantedNodes = new Set(topology.nodes.map((n) => n.name));
  for (const entry of await listDir(root)) {
    if (!wantedNodes.has(entry)) await rm(join(root, entry), { recursive: true, force: true });
  }
  await Promise.all(
    topology.nodes.map(async (node) => {
      const dir = join(root, node.name);
      await ensureDir(dir);
      const wanted = planNodeBundle(node);
      await Promise.all(
        wanted.map((file) => {
          const source = files.get(file);
          if (source === undefined) throw new Error(`bundle file ${file} was not produced`);
          return writeIfChanged(join(dir, file), source.content, source.mode);
        }),
      );
      const keep = new Set(wanted);
      for (const file of await listDir(dir)) {
        if (!keep.has(file)) await rm(join(dir, file), { recursive: true, force: true });
      }
    }),
  );
}
