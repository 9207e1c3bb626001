import { createPrivateKey, createPublicKey, X509Certificate } from "node:crypto";
import { cp, mkdtemp, readdir, readFile, rm, stat, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { parse } from "yaml";
import { K8slabError } from "../src/errors.js";
import type { PkiResult, PkiTopology } from "../src/pki/index.js";
import {
  checkPkiExpiry,
  ensurePki,
  nodeBundleDir,
  planCertificates,
  planNodeBundle,
} from "../src/pki/index.js";
import {
  certFacts,
  changedFiles,
  snapshotTree,
  threeNodeTopology,
  withNodeIp,
} from "./helpers/pki-fixture.js";

const DAY_MS = 24 * 60 * 60 * 1000;
const NODES = ["master", "minion1", "minion2"] as const;
const IPS = { master: "192.168.56.165", minion1: "192.168.56.166", minion2: "192.168.56.167" };

const LEAVES = [
  ...NODES.flatMap((n) => [`etcd-server-${n}`, `etcd-peer-${n}`]),
  "etcd-client-apiserver",
  "etcd-client-flannel",
  "apiserver",
  "apiserver-kubelet-client",
  ...NODES.flatMap((n) => [`kubelet-client-${n}`, `kubelet-server-${n}`]),
  "kube-proxy",
  "kube-controller-manager",
  "kube-scheduler",
  "admin",
];
const SERVER_CERTS = LEAVES.filter(
  (n) =>
    n.startsWith("etcd-server-") ||
    n.startsWith("etcd-peer-") ||
    n === "apiserver" ||
    n.startsWith("kubelet-server-"),
);
const CLIENT_CERTS = LEAVES.filter((n) => !SERVER_CERTS.includes(n) || n.startsWith("etcd-"));
/** What etcd's own CA signs: its members and its only two clients. Everything else: the lab CA. */
const ETCD_LEAVES = LEAVES.filter((n) => n.startsWith("etcd-"));
const issuerOf = (name: string) => (ETCD_LEAVES.includes(name) ? "etcd-ca" : "ca");
const CAS = ["ca", "etcd-ca"];

let root: string;
let labDir: string;
let pki: string;
let first: PkiResult;
let issuedAt: Date;

async function newLabCopy(name: string): Promise<string> {
  const copy = join(root, name);
  await cp(labDir, copy, { recursive: true });
  return copy;
}

async function read(path: string): Promise<string> {
  return readFile(path, "utf8");
}

async function openssl(args: string[]): Promise<string> {
  const { stdout } = await execa("openssl", args, { timeout: 30_000 });
  return stdout;
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "k8slab-pki-"));
  labDir = join(root, "three-node");
  pki = join(labDir, "pki");
  // A permissive umask must not leak into key modes: they are set explicitly.
  const umask = process.umask(0o000);
  try {
    issuedAt = new Date();
    first = await ensurePki(labDir, threeNodeTopology());
  } finally {
    process.umask(umask);
  }
});

afterAll(async () => {
  if (root !== undefined) await rm(root, { recursive: true, force: true });
});

describe("ensurePki on a fresh three-node lab", () => {
  it("issues the CA, every leaf and the service-account pair, and reports them created", () => {
    expect(first.dir).toBe(pki);
    expect([...first.created].sort()).toEqual([...CAS, "service-account", ...LEAVES].sort());
    expect(first.reissued).toEqual([]);
    expect(first.reused).toEqual([]);
    expect(first.removed).toEqual([]);
    expect(
      planCertificates(threeNodeTopology())
        .map((s) => s.name)
        .sort(),
    ).toEqual([...LEAVES].sort());
  });

  it("every certificate verifies against its CA with openssl verify -x509_strict, and only its CA", async () => {
    for (const ca of CAS) {
      const mine = LEAVES.filter((n) => issuerOf(n) === ca);
      const others = LEAVES.filter((n) => issuerOf(n) !== ca);
      const caFile = join(pki, `${ca}.pem`);
      const files = mine.map((n) => join(pki, `${n}.pem`));
      const out = await openssl(["verify", "-x509_strict", "-CAfile", caFile, ...files]);
      for (const file of files) expect(out).toContain(`${file}: OK`);
      for (const name of others) {
        const r = await execa("openssl", ["verify", "-CAfile", caFile, join(pki, `${name}.pem`)], {
          reject: false,
          timeout: 30_000,
        });
        expect(r.exitCode, `${name} must not verify against ${ca}`).not.toBe(0);
      }
      for (const [purpose, names] of [
        ["sslserver", SERVER_CERTS],
        ["sslclient", CLIENT_CERTS],
      ] as const) {
        const picked = names.filter((n) => issuerOf(n) === ca);
        const checked = await openssl([
          "verify",
          "-purpose",
          purpose,
          "-CAfile",
          caFile,
          ...picked.map((n) => join(pki, `${n}.pem`)),
        ]);
        expect(checked.split("\n").filter((l) => l.endsWith(": OK"))).toHaveLength(picked.length);
      }
    }
  });

  it("a pure client certificate is refused for server use", async () => {
    const result = await execa(
      "openssl",
      ["verify", "-purpose", "sslserver", "-CAfile", join(pki, "ca.pem"), join(pki, "admin.pem")],
      { reject: false, timeout: 30_000 },
    );
    expect(result.exitCode).not.toBe(0);
  });

  it("the signatures also verify with Node's X.509 (a second implementation besides openssl)", async () => {
    for (const name of LEAVES) {
      const ca = new X509Certificate(await read(join(pki, `${issuerOf(name)}.pem`)));
      const cert = new X509Certificate(await read(join(pki, `${name}.pem`)));
      expect(cert.verify(ca.publicKey), name).toBe(true);
      expect(cert.checkIssued(ca), name).toBe(true);
    }
  });

  it("the CA is a critical CA:TRUE certificate for keyCertSign and cRLSign", async () => {
    const facts = certFacts(await read(join(pki, "ca.pem")));
    expect(facts.isCa).toBe(true);
    expect(facts.subject.commonName).toBe("three-node-ca");
    const ext = await openssl([
      "x509",
      "-noout",
      "-ext",
      "basicConstraints,keyUsage",
      "-in",
      join(pki, "ca.pem"),
    ]);
    expect(ext).toMatch(/Basic Constraints: critical\s+CA:TRUE/);
    expect(ext).toMatch(/Key Usage: critical\s+.*Certificate Sign, CRL Sign/);
  });

  it("leaf certificates are critical CA:FALSE for digitalSignature and keyEncipherment", async () => {
    for (const name of LEAVES) {
      const file = join(pki, `${name}.pem`);
      expect(certFacts(await read(file)).isCa, name).toBe(false);
      const ext = await openssl([
        "x509",
        "-noout",
        "-ext",
        "basicConstraints,keyUsage",
        "-in",
        file,
      ]);
      expect(ext, name).toMatch(/Basic Constraints: critical\s+CA:FALSE/);
      expect(ext, name).toMatch(/Key Usage: critical\s+Digital Signature, Key Encipherment\s*$/);
    }
  });

  it("etcd members get a server and a peer certificate naming their IP and hostname", async () => {
    for (const node of NODES) {
      const server = certFacts(await read(join(pki, `etcd-server-${node}.pem`)));
      const peer = certFacts(await read(join(pki, `etcd-peer-${node}.pem`)));
      for (const facts of [server, peer]) {
        expect(facts.ipSans.sort()).toEqual([IPS[node], "127.0.0.1"].sort());
        expect(facts.dnsSans.sort()).toEqual([node, "localhost"].sort());
      }
      // etcd 3.4 uses its serving certificate as a client of itself (grpc-gateway).
      expect(server.extKeyUsage.sort()).toEqual(["clientAuth", "serverAuth"]);
      expect(peer.extKeyUsage.sort()).toEqual(["clientAuth", "serverAuth"]);
    }
  });

  it("the apiserver certificate covers every name the API is reached by", async () => {
    const facts = certFacts(await read(join(pki, "apiserver.pem")));
    expect(facts.extKeyUsage).toEqual(["serverAuth"]);
    expect(facts.ipSans.sort()).toEqual(["10.0.0.1", "127.0.0.1", "192.168.56.165"]);
    expect(facts.dnsSans.sort()).toEqual(
      [
        "master",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
      ].sort(),
    );
  });

  it("kubelet serving certificates name their node's IP and hostname", async () => {
    for (const node of NODES) {
      const facts = certFacts(await read(join(pki, `kubelet-server-${node}.pem`)));
      expect(facts.extKeyUsage).toEqual(["serverAuth"]);
      expect(facts.ipSans).toEqual([IPS[node]]);
      expect(facts.dnsSans).toEqual([node]);
    }
  });

  it.each([
    ["etcd-client-apiserver", "kube-apiserver-etcd-client", []],
    ["etcd-client-flannel", "flannel", []],
    ["apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"]],
    ["kubelet-client-master", "system:node:master", ["system:nodes"]],
    ["kubelet-client-minion1", "system:node:minion1", ["system:nodes"]],
    ["kubelet-client-minion2", "system:node:minion2", ["system:nodes"]],
    ["kube-proxy", "system:kube-proxy", []],
    ["kube-controller-manager", "system:kube-controller-manager", []],
    ["kube-scheduler", "system:kube-scheduler", []],
    ["admin", "admin", ["system:masters"]],
  ])("%s is a client certificate for CN %s, O %j", async (name, cn, orgs) => {
    const facts = certFacts(await read(join(pki, `${name}.pem`)));
    expect(facts.subject).toEqual({ commonName: cn, organizations: orgs });
    expect(facts.extKeyUsage).toEqual(["clientAuth"]);
    expect(facts.dnsSans).toEqual([]);
    expect(facts.ipSans).toEqual([]);
  });

  it("uses ECDSA P-256 leaves under an RSA 2048 CA, random positive serials, a backdated start and the configured validity", async () => {
    expect(certFacts(await read(join(pki, "ca.pem"))).modulusBits).toBe(2048);
    const serials = new Set<string>();
    for (const name of LEAVES) {
      const facts = certFacts(await read(join(pki, `${name}.pem`)));
      expect(facts.keyType, name).toBe("ec");
      expect(facts.curve, name).toBe("prime256v1");
      expect(Number.parseInt(facts.serialHex.slice(0, 1), 16), name).toBeLessThan(8);
      expect(facts.serialHex.length, name).toBeGreaterThanOrEqual(30);
      serials.add(facts.serialHex);
      const backdated = issuedAt.getTime() - facts.notBefore.getTime();
      expect(backdated, name).toBeGreaterThanOrEqual(60_000);
      expect(backdated, name).toBeLessThanOrEqual(15 * 60_000);
      const lifetimeDays = (facts.notAfter.getTime() - issuedAt.getTime()) / DAY_MS;
      expect(lifetimeDays, name).toBeGreaterThan(364.9);
      expect(lifetimeDays, name).toBeLessThan(365.1);
    }
    expect(serials.size).toBe(LEAVES.length);
    const ca = certFacts(await read(join(pki, "ca.pem")));
    expect(ca.notAfter.getTime()).toBeGreaterThan(issuedAt.getTime() + 365 * DAY_MS);
  });

  it("every key belongs to its certificate; the service-account pair belongs together", async () => {
    for (const name of [...CAS, ...LEAVES]) {
      const cert = new X509Certificate(await read(join(pki, `${name}.pem`)));
      const key = createPrivateKey(await read(join(pki, `${name}-key.pem`)));
      expect(cert.checkPrivateKey(key), name).toBe(true);
    }
    const publicPem = await read(join(pki, "service-account.pem"));
    expect(publicPem).toMatch(/^-----BEGIN PUBLIC KEY-----\n/);
    const derived = createPublicKey(await read(join(pki, "service-account-key.pem")))
      .export({ type: "spki", format: "pem" })
      .toString();
    expect(derived).toBe(publicPem);
  });

  it("keys and kubeconfigs are 0600, certificates 0644, even under umask 000", async () => {
    const dirs = [pki, ...NODES.map((n) => nodeBundleDir(labDir, n))];
    for (const dir of dirs) {
      for (const file of await readdir(dir)) {
        const path = join(dir, file);
        const info = await stat(path);
        if (info.isDirectory()) continue;
        const mode = info.mode & 0o777;
        if (file.endsWith("-key.pem") || file.endsWith(".kubeconfig")) {
          expect(mode, path).toBe(0o600);
        } else {
          expect(mode & 0o022, path).toBe(0);
        }
      }
    }
    expect((await stat(pki)).mode & 0o077).toBe(0);
  });

  it("writes LF-only files and keeps key material out of the manifest and the result", async () => {
    const files = await snapshotTree(pki);
    for (const [name, bytes] of files) expect(bytes.includes("\r"), name).toBe(false);
    const manifest = await read(join(pki, "manifest.json"));
    expect(manifest).not.toMatch(/PRIVATE KEY|BEGIN/);
    expect(JSON.parse(manifest).certs["etcd-server-minion1"].sans.ips).toContain("192.168.56.166");
    expect(JSON.stringify(first)).not.toMatch(/PRIVATE KEY|BEGIN/);
  });
});

describe("per-node bundles", () => {
  it("hold exactly what each node needs", async () => {
    for (const node of threeNodeTopology().nodes) {
      const files = (await readdir(nodeBundleDir(labDir, node.name))).sort();
      expect(files).toEqual(planNodeBundle(node).sort());
    }
    const master = await readdir(nodeBundleDir(labDir, "master"));
    expect(master).toEqual(
      expect.arrayContaining([
        "apiserver-key.pem",
        "apiserver-kubelet-client-key.pem",
        "etcd-client-apiserver-key.pem",
        "kube-controller-manager.kubeconfig",
        "kube-scheduler.kubeconfig",
        "service-account.pem",
        "service-account-key.pem",
        "etcd-server-master-key.pem",
        "etcd-peer-master-key.pem",
        "kubelet-master.kubeconfig",
        // Every node, the master too, registers and runs kube-proxy.
        "kube-proxy.kubeconfig",
      ]),
    );
    const minion = await readdir(nodeBundleDir(labDir, "minion1"));
    expect(minion).toEqual(
      expect.arrayContaining([
        "kube-proxy.kubeconfig",
        "kube-proxy-key.pem",
        "etcd-client-flannel-key.pem",
      ]),
    );
    expect(minion).not.toContain("apiserver-key.pem");
    expect(minion).not.toContain("service-account-key.pem");
  });

  it("never contain ca-key.pem or another node's keys, and copy the pki files unchanged", async () => {
    for (const node of NODES) {
      const dir = nodeBundleDir(labDir, node);
      const others = NODES.filter((n) => n !== node);
      for (const file of await readdir(dir)) {
        expect(file).not.toBe("ca-key.pem");
        for (const other of others) expect(file, `${node}/${file}`).not.toContain(other);
        const bytes = await readFile(join(dir, file));
        expect(bytes.equals(await readFile(join(pki, file))), `${node}/${file}`).toBe(true);
      }
      const keyTexts = await Promise.all(
        (await readdir(dir)).filter((f) => f.endsWith("-key.pem")).map((f) => read(join(dir, f))),
      );
      const caKey = await read(join(pki, "ca-key.pem"));
      expect(keyTexts).not.toContain(caKey);
    }
  });

  it("nodeBundleDir is <labDir>/pki/nodes/<node> and refuses path tricks", () => {
    expect(nodeBundleDir("/labs/x", "minion1")).toBe("/labs/x/pki/nodes/minion1");
    expect(() => nodeBundleDir("/labs/x", "../ca")).toThrow(K8slabError);
  });
});

describe("kubeconfigs", () => {
  interface Kubeconfig {
    clusters: { name: string; cluster: { server: string; "certificate-authority-data": string } }[];
    users: {
      name: string;
      user: { "client-certificate-data": string; "client-key-data": string };
    }[];
    contexts: { name: string; context: { cluster: string; user: string } }[];
    "current-context": string;
  }
  const load = async (file: string): Promise<Kubeconfig> =>
    parse(await read(join(pki, file))) as Kubeconfig;
  const decode = (data: string): string => Buffer.from(data, "base64").toString("utf8");

  it("admin.kubeconfig embeds the CA, the admin certificate and key for the lab's cluster", async () => {
    const config = await load("admin.kubeconfig");
    expect(config.clusters).toHaveLength(1);
    expect(config.clusters[0]!.name).toBe("three-node");
    expect(config.clusters[0]!.cluster.server).toBe("https://192.168.56.165:6443");
    expect(decode(config.clusters[0]!.cluster["certificate-authority-data"])).toBe(
      await read(join(pki, "ca.pem")),
    );
    expect(config.contexts[0]).toEqual({
      name: "three-node",
      context: { cluster: "three-node", user: "admin" },
    });
    expect(config["current-context"]).toBe("three-node");
    const user = config.users[0]!.user;
    expect(decode(user["client-certificate-data"])).toBe(await read(join(pki, "admin.pem")));
    expect(decode(user["client-key-data"])).toBe(await read(join(pki, "admin-key.pem")));
  });

  it.each([
    [
      "kubelet-minion1.kubeconfig",
      "system:node:minion1",
      "https://192.168.56.165:6443",
      "kubelet-client-minion1",
    ],
    [
      "kubelet-master.kubeconfig",
      "system:node:master",
      "https://192.168.56.165:6443",
      "kubelet-client-master",
    ],
    ["kube-proxy.kubeconfig", "system:kube-proxy", "https://192.168.56.165:6443", "kube-proxy"],
    [
      "kube-controller-manager.kubeconfig",
      "system:kube-controller-manager",
      "https://127.0.0.1:6443",
      "kube-controller-manager",
    ],
    [
      "kube-scheduler.kubeconfig",
      "system:kube-scheduler",
      "https://127.0.0.1:6443",
      "kube-scheduler",
    ],
  ])("%s authenticates as %s against %s", async (file, userName, server, cert) => {
    const config = await load(file);
    expect(config.clusters[0]!.cluster.server).toBe(server);
    expect(config.users[0]!.name).toBe(userName);
    expect(decode(config.users[0]!.user["client-certificate-data"])).toBe(
      await read(join(pki, `${cert}.pem`)),
    );
  });

  it("kubectl reads admin.kubeconfig", async () => {
    const { stdout } = await execa(
      "/usr/bin/kubectl",
      [
        "config",
        "view",
        "--kubeconfig",
        join(pki, "admin.kubeconfig"),
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
      ],
      { timeout: 30_000 },
    );
    expect(stdout).toBe("https://192.168.56.165:6443");
  });
});

describe("re-running ensurePki", () => {
  it("changes no byte and reports everything reused", async () => {
    const dir = await newLabCopy("rerun");
    const before = await snapshotTree(join(dir, "pki"));
    const again = await ensurePki(dir, threeNodeTopology());
    expect(again.created).toEqual([]);
    expect(again.reissued).toEqual([]);
    expect(again.removed).toEqual([]);
    expect([...again.reused].sort()).toEqual([...CAS, "service-account", ...LEAVES].sort());
    expect(changedFiles(before, await snapshotTree(join(dir, "pki")))).toEqual([]);
  });

  it("re-issues exactly the certificates naming a changed worker IP, from the same CA", async () => {
    const dir = await newLabCopy("ip-change");
    const before = await snapshotTree(join(dir, "pki"));
    const result = await ensurePki(
      dir,
      withNodeIp(threeNodeTopology(), "minion1", "192.168.56.170"),
    );
    expect(result.reissued.map((r) => r.name).sort()).toEqual(
      ["etcd-peer-minion1", "etcd-server-minion1", "kubelet-server-minion1"].sort(),
    );
    for (const { reason } of result.reissued) {
      expect(reason).toBe("SANs changed: 192.168.56.166 -> 192.168.56.170");
    }
    expect(result.created).toEqual([]);
    expect(result.removed).toEqual([]);
    expect(result.reused).toContain("ca");

    const changed = changedFiles(before, await snapshotTree(join(dir, "pki")));
    const reissuedFiles = [
      "etcd-peer-minion1",
      "etcd-server-minion1",
      "kubelet-server-minion1",
    ].flatMap((n) => [
      `${n}.pem`,
      `${n}-key.pem`,
      `nodes/minion1/${n}.pem`,
      `nodes/minion1/${n}-key.pem`,
    ]);
    expect(changed).toEqual([...reissuedFiles, "manifest.json"].sort());

    const pkiDir = join(dir, "pki");
    const facts = certFacts(await read(join(pkiDir, "etcd-server-minion1.pem")));
    expect(facts.ipSans.sort()).toEqual(["127.0.0.1", "192.168.56.170"]);
    // Verified against the CAs of the first run: they were reused, not replaced.
    for (const name of ["etcd-server-minion1", "kubelet-server-minion1"]) {
      const out = await openssl([
        "verify",
        "-CAfile",
        join(pki, `${issuerOf(name)}.pem`),
        join(pkiDir, `${name}.pem`),
      ]);
      expect(out.trim()).toMatch(/: OK$/);
    }
  });

  it("a changed master IP also re-issues the apiserver certificate", async () => {
    const dir = await newLabCopy("master-ip");
    const topology: PkiTopology = {
      ...withNodeIp(threeNodeTopology(), "master", "192.168.56.175"),
      apiServerUrl: "https://192.168.56.175:6443",
    };
    const result = await ensurePki(dir, topology);
    expect(result.reissued.map((r) => r.name).sort()).toEqual(
      ["apiserver", "etcd-peer-master", "etcd-server-master", "kubelet-server-master"].sort(),
    );
    const admin = parse(await read(join(dir, "pki", "admin.kubeconfig"))) as {
      clusters: { cluster: { server: string } }[];
    };
    expect(admin.clusters[0]!.cluster.server).toBe("https://192.168.56.175:6443");
  });

  it("removes the certificates, kubeconfig and bundle of a node gone from the topology", async () => {
    const dir = await newLabCopy("node-gone");
    const base = threeNodeTopology();
    const result = await ensurePki(dir, {
      ...base,
      nodes: base.nodes.filter((n) => n.name !== "minion2"),
    });
    expect(result.removed.sort()).toEqual(
      [
        "etcd-peer-minion2",
        "etcd-server-minion2",
        "kubelet-client-minion2",
        "kubelet-server-minion2",
      ].sort(),
    );
    expect(result.reissued).toEqual([]);
    const left = await readdir(join(dir, "pki"));
    expect(left.filter((f) => f.includes("minion2"))).toEqual([]);
    expect(await readdir(join(dir, "pki", "nodes"))).toEqual(["master", "minion1"]);
    const manifest = JSON.parse(await read(join(dir, "pki", "manifest.json"))) as {
      certs: Record<string, unknown>;
    };
    expect(Object.keys(manifest.certs).filter((n) => n.includes("minion2"))).toEqual([]);
  });

  it("re-issues a certificate whose file was deleted, saying so", async () => {
    const dir = await newLabCopy("file-gone");
    await unlink(join(dir, "pki", "kubelet-server-minion2.pem"));
    const result = await ensurePki(dir, threeNodeTopology());
    expect(result.reissued).toEqual([
      { name: "kubelet-server-minion2", reason: "kubelet-server-minion2.pem is missing" },
    ]);
  });

  it("refuses to continue without ca-key.pem when certificates exist, and writes nothing", async () => {
    const dir = await newLabCopy("no-ca-key");
    await unlink(join(dir, "pki", "ca-key.pem"));
    const before = await snapshotTree(join(dir, "pki"));
    const error = await ensurePki(dir, threeNodeTopology()).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(K8slabError);
    expect((error as K8slabError).message).toContain("ca-key.pem is missing");
    expect((error as K8slabError).hint).toMatch(/restore ca-key\.pem/);
    expect(changedFiles(before, await snapshotTree(join(dir, "pki")))).toEqual([]);
  });

  it("reports results in plan order", async () => {
    const dir = await newLabCopy("order");
    const again = await ensurePki(dir, threeNodeTopology());
    expect(again.reused).toEqual([...CAS, ...LEAVES, "service-account"]);
    expect(first.created).toEqual([...CAS, ...LEAVES, "service-account"]);
  });

  it("makes a new service-account pair when half of it is gone", async () => {
    const dir = await newLabCopy("sa-gone");
    await unlink(join(dir, "pki", "service-account.pem"));
    const result = await ensurePki(dir, threeNodeTopology());
    expect(result.reissued).toEqual([
      { name: "service-account", reason: "service-account.pem is missing; new key pair" },
    ]);
  });

  it("turns a corrupt manifest into a K8slabError with a hint", async () => {
    const dir = await newLabCopy("bad-manifest");
    await writeFile(join(dir, "pki", "manifest.json"), "{ not json");
    const error = await ensurePki(dir, threeNodeTopology()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(K8slabError);
    expect((error as K8slabError).hint).toMatch(/remove .*manifest\.json/);
  });

  it("a lost manifest is rebuilt from the certificates on disk: no key changes", async () => {
    const dir = await newLabCopy("manifest-gone");
    const manifest = await read(join(dir, "pki", "manifest.json"));
    await unlink(join(dir, "pki", "manifest.json"));
    const before = await snapshotTree(join(dir, "pki"));
    const result = await ensurePki(dir, threeNodeTopology());
    expect(result.reissued).toEqual([]);
    expect(result.created).toEqual([]);
    expect(await read(join(dir, "pki", "manifest.json"))).toBe(manifest);
    expect(changedFiles(before, await snapshotTree(join(dir, "pki")))).toEqual(["manifest.json"]);
  });

  it("a lost manifest still re-issues what no longer fits the lab, and only that", async () => {
    const dir = await newLabCopy("manifest-gone-changed");
    await unlink(join(dir, "pki", "manifest.json"));
    const moved = threeNodeTopology();
    moved.nodes = moved.nodes.map((n) =>
      n.name === "minion2" ? { ...n, ip: "192.168.56.177" } : n,
    );
    const result = await ensurePki(dir, moved);
    expect(result.reissued.map((r) => r.name).sort()).toEqual(
      ["etcd-peer-minion2", "etcd-server-minion2", "kubelet-server-minion2"].sort(),
    );
    expect(result.reissued[0]!.reason).toMatch(
      /SANs changed: 192\.168\.56\.167 -> 192\.168\.56\.177/,
    );
  });

  it("a corrupt ca.pem or ca-key.pem stops with the file and the way back; nothing is replaced", async () => {
    for (const [file, hint] of [
      ["ca.pem", /cp .*pki\/nodes\/\w+\/ca\.pem .*pki\/ca\.pem/],
      ["ca-key.pem", /restore ca-key\.pem from a backup/],
    ] as const) {
      const dir = await newLabCopy(`corrupt-${file}`);
      const path = join(dir, "pki", file);
      const text = await read(path);
      await writeFile(path, text.slice(0, text.length / 2));
      const before = await snapshotTree(join(dir, "pki"));
      const error = await ensurePki(dir, threeNodeTopology()).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(K8slabError);
      expect((error as K8slabError).message).toContain(`${path} is not a readable`);
      expect((error as K8slabError).hint).toMatch(hint);
      expect(changedFiles(before, await snapshotTree(join(dir, "pki")))).toEqual([]);
    }
  });

  it("a lab from before etcd had its own CA gets one, and its etcd certificates re-issued from it", async () => {
    const dir = await newLabCopy("no-etcd-ca");
    await unlink(join(dir, "pki", "etcd-ca-key.pem"));
    await unlink(join(dir, "pki", "etcd-ca.pem"));
    const result = await ensurePki(dir, threeNodeTopology());
    expect(result.created).toEqual(["etcd-ca"]);
    expect(result.reissued.map((r) => r.name).sort()).toEqual([...ETCD_LEAVES].sort());
    expect(new Set(result.reissued.map((r) => r.reason))).toEqual(
      new Set(["not signed by the etcd CA"]),
    );
    expect(result.reused).toContain("ca");
    const out = await openssl([
      "verify",
      "-CAfile",
      join(dir, "pki", "etcd-ca.pem"),
      ...ETCD_LEAVES.map((n) => join(dir, "pki", `${n}.pem`)),
    ]);
    expect(out.split("\n").filter((l) => l.endsWith(": OK"))).toHaveLength(ETCD_LEAVES.length);
  });

  it("refuses to build a new CA over certificates of an old one", async () => {
    const dir = await newLabCopy("no-ca");
    await unlink(join(dir, "pki", "ca-key.pem"));
    await unlink(join(dir, "pki", "ca.pem"));
    await expect(ensurePki(dir, threeNodeTopology())).rejects.toThrow(K8slabError);
  });

  it("renews certificates 30 days before they expire, keeping the CA", async () => {
    const dir = await newLabCopy("renew");
    const later = new Date(issuedAt.getTime() + 340 * DAY_MS);
    const result = await ensurePki(dir, threeNodeTopology(), { now: later });
    expect(result.reissued.map((r) => r.name).sort()).toEqual([...LEAVES].sort());
    expect(result.reissued[0]!.reason).toMatch(/^expires in 2[45] days \(\d{4}-\d\d-\d\d\)$/);
    expect(result.reused.sort()).toEqual([...CAS, "service-account"]);
    expect(await checkPkiExpiry(dir, { now: later })).toEqual([]);
  });
});

describe("checkPkiExpiry", () => {
  it("is quiet for a fresh lab", async () => {
    expect(await checkPkiExpiry(labDir)).toEqual([]);
  });

  it("warns for every certificate of a short-lived PKI", async () => {
    const dir = join(root, "short");
    const now = new Date();
    await ensurePki(dir, threeNodeTopology({ validityDays: 10 }), { now });
    const warnings = await checkPkiExpiry(dir, { now });
    expect(warnings.map((w) => w.name).sort()).toEqual([...LEAVES].sort());
    for (const warning of warnings) {
      expect(warning.daysLeft).toBe(9);
      expect(warning.notAfter.getTime()).toBeGreaterThan(now.getTime());
    }
    const withCa = await checkPkiExpiry(dir, { now, withinDays: 200 });
    // The CAs outlive every certificate they sign: last.
    expect(
      withCa
        .slice(-2)
        .map((w) => w.name)
        .sort(),
    ).toEqual(CAS);
  });

  it("reports expired certificates with negative days", async () => {
    const later = new Date(Date.now() + 400 * DAY_MS);
    const warnings = await checkPkiExpiry(labDir, { now: later });
    expect(warnings).toHaveLength(LEAVES.length);
    expect(warnings.every((w) => w.daysLeft < 0)).toBe(true);
  });

  it("names a damaged certificate instead of crashing (status reads them)", async () => {
    const dir = await newLabCopy("expiry-damaged");
    const path = join(dir, "pki", "apiserver.pem");
    await writeFile(path, (await read(path)).slice(0, 200));
    const error = await checkPkiExpiry(dir).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(K8slabError);
    expect((error as K8slabError).message).toBe(
      `${path} is not a readable certificate (cut short or damaged)`,
    );
    expect((error as K8slabError).hint).toMatch(/k8slab render/);
  });

  it("returns nothing when the lab has no PKI yet", async () => {
    expect(await checkPkiExpiry(join(root, "nothing-here"))).toEqual([]);
  });
});

describe("planCertificates", () => {
  it("adds the API server URL's host to the apiserver SANs when it is not the master's IP", () => {
    const byName = (t: PkiTopology) => planCertificates(t).find((s) => s.name === "apiserver")!;
    const named = byName(threeNodeTopology({ apiServerUrl: "https://k8s.lab.test:6443" }));
    expect(named.sans.dns).toContain("k8s.lab.test");
    const vip = byName(threeNodeTopology({ apiServerUrl: "https://192.168.56.200:6443" }));
    expect(vip.sans.ips).toEqual(["192.168.56.165", "10.0.0.1", "127.0.0.1", "192.168.56.200"]);
    expect(byName(threeNodeTopology()).sans.ips).toEqual([
      "192.168.56.165",
      "10.0.0.1",
      "127.0.0.1",
    ]);
  });

  it("gives a worker-only node no etcd certificates", () => {
    const base = threeNodeTopology();
    const names = planCertificates({
      ...base,
      nodes: base.nodes.map((n) =>
        n.name === "minion2" ? { ...n, roles: ["worker"] as const } : n,
      ),
    }).map((s) => s.name);
    expect(names).not.toContain("etcd-server-minion2");
    expect(names).toContain("kubelet-server-minion2");
  });
});

describe("topology validation", () => {
  it.each([
    [
      "two control-plane nodes",
      (t: PkiTopology): PkiTopology => ({
        ...t,
        nodes: t.nodes.map((n) => ({ ...n, roles: ["etcd", "control-plane"] as const })),
      }),
    ],
    ["a duplicate IP", (t: PkiTopology) => withNodeIp(t, "minion2", "192.168.56.166")],
    ["a bad IP", (t: PkiTopology) => withNodeIp(t, "minion2", "192.168.56.300")],
    [
      "a node name that is not a DNS label",
      (t: PkiTopology): PkiTopology => ({
        ...t,
        nodes: t.nodes.map((n) => (n.name === "minion2" ? { ...n, name: "../x" } : n)),
      }),
    ],
  ])("rejects %s with a K8slabError before touching the disk", async (_what, mutate) => {
    const dir = join(root, "invalid");
    await expect(ensurePki(dir, mutate(threeNodeTopology()))).rejects.toThrow(K8slabError);
    await expect(stat(dir)).rejects.toThrow();
  });
});

describe("secrecy of output", () => {
  it("prints nothing while issuing", async () => {
    const writes: string[] = [];
    const capture = (chunk: unknown): boolean => {
      writes.push(String(chunk));
      return true;
    };
    const out = vi.spyOn(process.stdout, "write").mockImplementation(capture);
    const err = vi.spyOn(process.stderr, "write").mockImplementation(capture);
    const log = vi.spyOn(console, "log");
    try {
      await ensurePki(join(root, "quiet"), threeNodeTopology());
    } finally {
      out.mockRestore();
      err.mockRestore();
      log.mockRestore();
    }
    expect(writes.join("")).not.toMatch(/PRIVATE KEY/);
    expect(log).not.toHaveBeenCalled();
  });
});
