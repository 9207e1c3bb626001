/**
 * The generated etcd certificates run a real three-member etcd 3.4 cluster with mutual TLS for
 * clients and peers, each member in its own network namespace at the lab's node address.
 */
import { mkdir, mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensurePki, nodeBundleDir } from "../src/pki/index.js";
import type { NetnsNetwork } from "./helpers/netns.js";
import { createNetnsNetwork, netnsSupport, waitFor } from "./helpers/netns.js";
import { threeNodeTopology } from "./helpers/pki-fixture.js";

const support = netnsSupport();
const topology = threeNodeTopology();
const initialCluster = topology.nodes.map((n) => `${n.name}=https://${n.ip}:2380`).join(",");
const endpoints = topology.nodes.map((n) => `https://${n.ip}:2379`);

let root: string;
let labDir: string;
let net: NetnsNetwork | undefined;

function etcdArgs(node: { name: string; ip: string }, dataDir: string): string[] {
  const bundle = nodeBundleDir(labDir, node.name);
  const file = (name: string): string => join(bundle, name);
  return [
    `--name=${node.name}`,
    `--data-dir=${dataDir}`,
    `--listen-client-urls=https://${node.ip}:2379,https://127.0.0.1:2379`,
    `--advertise-client-urls=https://${node.ip}:2379`,
    `--listen-peer-urls=https://${node.ip}:2380`,
    `--initial-advertise-peer-urls=https://${node.ip}:2380`,
    `--initial-cluster=${initialCluster}`,
    "--initial-cluster-state=new",
    `--initial-cluster-token=k8slab-test-${process.pid}`,
    "--client-cert-auth",
    `--trusted-ca-file=${file("etcd-ca.pem")}`,
    `--cert-file=${file(`etcd-server-${node.name}.pem`)}`,
    `--key-file=${file(`etcd-server-${node.name}-key.pem`)}`,
    "--peer-client-cert-auth",
    `--peer-trusted-ca-file=${file("etcd-ca.pem")}`,
    `--peer-cert-file=${file(`etcd-peer-${node.name}.pem`)}`,
    `--peer-key-file=${file(`etcd-peer-${node.name}-key.pem`)}`,
    "--enable-v2",
    "--logger=zap",
    "--log-outputs=stderr",
  ];
}

/**
 * etcdctl (v3 API) in a node's namespace, trusting etcd's CA from that node's bundle, with a
 * client certificate: a name in that bundle, or the path of one elsewhere (without ".pem").
 */
function etcdctl(node: string, cert: string | undefined, args: string[]) {
  const bundle = nodeBundleDir(labDir, node);
  const tls = [`--cacert=${join(bundle, "etcd-ca.pem")}`];
  if (cert !== undefined) {
    const base = cert.includes("/") ? cert : join(bundle, cert);
    tls.push(`--cert=${base}.pem`, `--key=${base}-key.pem`);
  }
  return net!.exec(
    net!.host(node).ns,
    "etcdctl",
    ["--dial-timeout=3s", "--command-timeout=5s", ...tls, ...args],
    { timeoutMs: 15_000, env: { ETCDCTL_API: "3" } },
  );
}

/** Unique per run, so a crashed earlier run never collides with this one. */
function prefix(): string {
  return `k8slab-t-${process.pid}-`;
}

async function logsTail(): Promise<string> {
  const parts = await Promise.all(
    topology.nodes.map(async (n) => {
      const text = await readFile(join(root, `etcd-${n.name}.log`), "utf8").catch(() => "");
      return `--- etcd ${n.name} ---\n${text.split("\n").slice(-15).join("\n")}`;
    }),
  );
  return parts.join("\n");
}

function waitForLog(node: string, pattern: RegExp): Promise<void> {
  return waitFor(
    `etcd on ${node} to log ${pattern}`,
    async () => {
      const log = await readFile(join(root, `etcd-${node}.log`), "utf8");
      return pattern.test(log)
        ? { done: true, value: undefined }
        : { done: false, detail: "not logged yet" };
    },
    { attempts: 20, intervalMs: 250, timeoutMs: 5_000 },
  );
}

describe.skipIf(!support.ok)("a real etcd 3.4 cluster with the lab's certificates", () => {
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "k8slab-etcd-"));
    labDir = join(root, "three-node");
    await ensurePki(labDir, topology);
    net = await createNetnsNetwork({
      prefix: prefix(),
      prefixLength: 24,
      hosts: topology.nodes.map((n) => ({ name: n.name, ip: n.ip })),
    });
    try {
      for (const node of topology.nodes) {
        const dataDir = join(root, `data-${node.name}`);
        await mkdir(dataDir, { mode: 0o700 });
        net.start(
          net.host(node.name).ns,
          "etcd",
          etcdArgs(node, dataDir),
          join(root, `etcd-${node.name}.log`),
        );
      }
      await waitFor(
        "all three etcd members to report healthy",
        async () => {
          const result = await etcdctl("master", "etcd-client-apiserver", [
            `--endpoints=${endpoints[0]}`,
            "endpoint",
            "health",
            "--cluster",
          ]);
          const healthy = result.all.split("\n").filter((l) => l.includes("is healthy")).length;
          return result.exitCode === 0 && healthy === 3
            ? { done: true, value: undefined }
            : { done: false, detail: result.all.trim().split("\n").slice(-3).join(" | ") };
        },
        { attempts: 60, intervalMs: 500, timeoutMs: 45_000 },
      );
    } catch (error) {
      throw new Error(`${String(error)}\n${await logsTail()}`, { cause: error });
    }
  }, 90_000);

  afterAll(async () => {
    try {
      await net?.destroy();
    } finally {
      if (root !== undefined) await rm(root, { recursive: true, force: true });
    }
  }, 30_000);

  it("every member is healthy over mutual TLS (etcd-client-apiserver certificate)", async () => {
    const result = await etcdctl("master", "etcd-client-apiserver", [
      `--endpoints=${endpoints[0]}`,
      "endpoint",
      "health",
      "--cluster",
    ]);
    expect(result.exitCode, result.all).toBe(0);
    for (const endpoint of endpoints) expect(result.all).toContain(`${endpoint} is healthy`);
  });

  it("etcd accepts its own serving certificate as a client (no key-usage rejections)", async () => {
    for (const node of topology.nodes) {
      const log = await readFile(join(root, `etcd-${node.name}.log`), "utf8");
      expect(log, node.name).not.toContain("incompatible key usage");
      expect(log, node.name).not.toContain("bad certificate");
    }
  });

  it("the members found each other over TLS peer URLs", async () => {
    const result = await etcdctl("minion1", "etcd-client-flannel", [
      `--endpoints=${endpoints[1]}`,
      "member",
      "list",
      "--write-out=simple",
    ]);
    expect(result.exitCode, result.all).toBe(0);
    const lines = result.stdout.split("\n").filter((l) => l.includes("started"));
    expect(lines).toHaveLength(3);
    for (const node of topology.nodes) {
      expect(result.stdout).toContain(
        `${node.name}, https://${node.ip}:2380, https://${node.ip}:2379`,
      );
    }
  });

  it("a value written on one member is read on another", async () => {
    const put = await etcdctl("master", "etcd-client-apiserver", [
      `--endpoints=${endpoints[0]}`,
      "put",
      "/k8slab/test",
      "hello",
    ]);
    expect(put.exitCode, put.all).toBe(0);
    const get = await etcdctl("minion2", "etcd-client-flannel", [
      `--endpoints=${endpoints[2]}`,
      "get",
      "/k8slab/test",
      "--print-value-only",
    ]);
    expect(get.exitCode, get.all).toBe(0);
    expect(get.stdout.trim()).toBe("hello");
  });

  it("flannel's certificate can use the v2 keyspace (--enable-v2)", async () => {
    const bundle = nodeBundleDir(labDir, "minion1");
    const v2 = (args: string[]) =>
      net!.exec(
        net!.host("minion1").ns,
        "etcdctl",
        [
          `--endpoints=${endpoints[1]}`,
          `--ca-file=${join(bundle, "etcd-ca.pem")}`,
          `--cert-file=${join(bundle, "etcd-client-flannel.pem")}`,
          `--key-file=${join(bundle, "etcd-client-flannel-key.pem")}`,
          ...args,
        ],
        { timeoutMs: 15_000, env: { ETCDCTL_API: "2" } },
      );
    const config = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}';
    const set = await v2(["set", "/coreos.com/network/config", config]);
    expect(set.exitCode, set.all).toBe(0);
    const get = await v2(["get", "/coreos.com/network/config"]);
    expect(get.exitCode, get.all).toBe(0);
    expect(get.stdout.trim()).toBe(config);
  });

  it("refuses a client that presents no certificate", async () => {
    const result = await etcdctl("master", undefined, [
      `--endpoints=${endpoints[0]}`,
      "endpoint",
      "health",
    ]);
    expect(result.exitCode).not.toBe(0);
    expect(result.all).not.toContain("is healthy");
    await waitForLog(
      "master",
      /rejected connection.*(didn't provide a certificate|certificate required)/,
    );
  });

  it("refuses the lab's own certificates that are not etcd's: a kubelet's, kube-proxy's, the admin's", async () => {
    // They are signed by the lab's CA, which etcd does not trust: with one of them a node could
    // otherwise read every Secret in /registry or write RBAC objects.
    for (const [node, cert] of [
      ["minion1", "kubelet-client-minion1"],
      ["minion1", "kube-proxy"],
    ] as const) {
      const result = await etcdctl(node, cert, [
        `--endpoints=${endpoints[0]}`,
        "get",
        "/registry/secrets",
        "--prefix",
        "--keys-only",
      ]);
      expect(result.exitCode, `${cert}: ${result.all}`).not.toBe(0);
    }
    const admin = await etcdctl("master", join(labDir, "pki", "admin"), [
      `--endpoints=${endpoints[0]}`,
      "put",
      "/registry/clusterrolebindings/pwn",
      "x",
    ]);
    expect(admin.exitCode, admin.all).not.toBe(0);
    await waitForLog("master", /rejected connection.*signed by unknown authority/);
    // Only etcd's two clients have certificates for it: no node bundle has another.
    for (const node of topology.nodes) {
      const clients = (await readdir(nodeBundleDir(labDir, node.name))).filter(
        (f) => f.startsWith("etcd-client-") && f.endsWith("-key.pem"),
      );
      expect(clients.sort(), node.name).toEqual(
        node.roles.includes("control-plane")
          ? ["etcd-client-apiserver-key.pem", "etcd-client-flannel-key.pem"]
          : ["etcd-client-flannel-key.pem"],
      );
    }
  });

  it("refuses a client certificate issued by another lab's CA", async () => {
    const otherLab = join(root, "other-lab");
    await ensurePki(otherLab, threeNodeTopology({ labName: "other-lab" }));
    const result = await etcdctl(
      "master",
      join(nodeBundleDir(otherLab, "master"), "etcd-client-apiserver"),
      [`--endpoints=${endpoints[0]}`, "endpoint", "health"],
    );
    expect(result.exitCode).not.toBe(0);
    expect(result.all).not.toContain("is healthy");
    await waitForLog("master", /rejected connection.*signed by unknown authority/);
  });
});
