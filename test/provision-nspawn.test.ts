/**
 * The rendered provisioners on real nodes: the three-node lab's base, pki, etcd and flannel-config
 * phases run, as Vagrant runs them (`bash script`, the node's PKI bundle uploaded to
 * /tmp/k8slab-pki first), on three Debian 12 nodes with real systemd (systemd-nspawn containers
 * in network namespaces, at the lab's addresses on eth1). Debian's etcd 3.4 stands in for the
 * release artifact: the lab file is the built-in one with `artifacts: {}`, so there is no
 * artifacts phase and need_bin finds /usr/bin/etcd and /usr/bin/etcdctl.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Phase } from "../src/plan/plan.js";
import type { RenderResult } from "../src/render/index.js";
import { renderLabDir } from "../src/render/index.js";
import { editedLab, OFFLINE } from "./helpers/labs.js";
import type { ExecResult, NspawnCluster, NspawnNode } from "./helpers/nspawn-cluster.js";
import { ensureRootfs, nspawnAvailable, startNspawnCluster } from "./helpers/nspawn-cluster.js";
import { waitFor } from "./helpers/netns.js";

const availability = await nspawnAvailable();
if (!availability.ok) {
  console.warn(`provisioning on nspawn nodes skipped: ${availability.reason ?? "unknown reason"}`);
}

/** The built-in three-node lab's nodes and network, as the seed numbers them. */
const LAB_NODES = [
  { name: "master", ip: "192.168.56.165" },
  { name: "minion1", ip: "192.168.56.166" },
  { name: "minion2", ip: "192.168.56.167" },
] as const;
const PREFIX = 24;
const ENDPOINTS = LAB_NODES.map((n) => `https://${n.ip}:2379`).join(",");
const POD_NETWORK = { Network: "10.1.0.0/16", SubnetLen: 24, Backend: { Type: "vxlan" } };
/** What the scripts log when they change something (put_file, ensure_service, base.sh). */
const CHANGE_LOG =
  /\bwrote \/|\S+\.service (re)?started\b|\] set \S+ = |swap (turned off|disabled)|time sync enabled/;
const PHASE_TIMEOUT_MS = 60_000;
/** Everything the phases under test write, checked by path, mode, owner, mtime and content. */
const WATCHED =
  "/etc/systemd/system /etc/kubernetes/pki /etc/hosts /etc/sysctl.d /etc/modules-load.d";

let root: string | undefined;
let rendered: RenderResult | undefined;
let cluster: NspawnCluster | undefined;
const timings: string[] = [];
/** flannel-config run on master after base and pki, before any etcd member runs. */
let beforeEtcd: ExecResult | undefined;
/** The first run's output of each phase on each node ("master etcd" -> result). */
const firstRun = new Map<string, ExecResult>();

function lab(): RenderResult {
  if (!rendered) throw new Error("the lab was not rendered");
  return rendered;
}

function node(name: string): NspawnNode {
  const found = cluster?.nodes.find((n) => n.name === name);
  if (!found) throw new Error(`node ${name} is not running`);
  return found;
}

function describeResult(what: string, r: ExecResult): string {
  return `${what}: exit ${r.exitCode}\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}`;
}

function expectOk(what: string, r: ExecResult): void {
  expect(r.exitCode, describeResult(what, r)).toBe(0);
}

async function timed<T>(what: string, work: () => Promise<T>): Promise<T> {
  const t0 = Date.now();
  try {
    return await work();
  } finally {
    timings.push(`${what} ${Date.now() - t0} ms`);
  }
}

/** Where the lab directory's provision/ is in a node (Vagrant's /vagrant synced folder). */
function scriptPath(nodeName: string, phase: Phase): string {
  return `/vagrant/provision/${nodeName}/${phase}.sh`;
}

function runPhase(nodeName: string, phase: Phase): Promise<ExecResult> {
  return node(nodeName).exec(`bash ${scriptPath(nodeName, phase)}`, {
    timeoutMs: PHASE_TIMEOUT_MS,
  });
}

/** Vagrant's "pki-upload" file provisioner: the node's own bundle to /tmp/k8slab-pki. */
async function uploadPki(nodeName: string): Promise<void> {
  await node(nodeName).copyIn(
    join(lab().dir, "pki", "nodes", nodeName),
    lab().plan.paths.pkiUpload,
  );
}

/** Runs `phase` on every node that has it, one node after another as `vagrant provision` does. */
async function runPhaseOnAll(phase: Phase): Promise<Map<string, ExecResult>> {
  const results = new Map<string, ExecResult>();
  for (const n of lab().plan.nodes) {
    if (!n.phases.includes(phase)) continue;
    results.set(n.name, await timed(`${n.name} ${phase}`, () => runPhase(n.name, phase)));
  }
  return results;
}

/** etcdctl with the v3 API from inside a node, with a client certificate from its PKI. */
function etcdctl3(cert: string, args: string): string {
  const pki = lab().plan.paths.pki;
  return [
    "ETCDCTL_API=3 etcdctl --dial-timeout=3s --command-timeout=5s",
    `--endpoints ${ENDPOINTS}`,
    `--cacert ${pki}/etcd-ca.pem --cert ${pki}/${cert}.pem --key ${pki}/${cert}-key.pem`,
    args,
  ].join(" ");
}

/** etcdctl with the v2 API (flannel's keyspace), as flannel-config.sh calls it. */
function etcdctl2(cert: string, args: string): string {
  const pki = lab().plan.paths.pki;
  return [
    "ETCDCTL_API=2 etcdctl",
    `--endpoints ${ENDPOINTS}`,
    `--ca-file ${pki}/etcd-ca.pem --cert-file ${pki}/${cert}.pem --key-file ${pki}/${cert}-key.pem`,
    args,
  ].join(" ");
}

/** All three members healthy, asked from master with the apiserver's etcd client certificate. */
async function waitForQuorum(what: string): Promise<void> {
  await timed(what, () =>
    waitFor(
      what,
      async () => {
        const r = await node("master").exec(
          `${etcdctl3("etcd-client-apiserver", "endpoint health")} 2>&1`,
          { timeoutMs: 20_000 },
        );
        const healthy = r.stdout.split("\n").filter((l) => l.includes(" is healthy")).length;
        return r.exitCode === 0 && healthy === LAB_NODES.length
          ? { done: true, value: undefined }
          : { done: false, detail: r.stdout.trim().split("\n").slice(-3).join(" | ") };
      },
      { attempts: 60, intervalMs: 500, timeoutMs: 45_000 },
    ),
  );
}

async function etcdJournals(): Promise<string> {
  const parts: string[] = [];
  for (const n of LAB_NODES) {
    const r = await node(n.name)
      .exec("systemctl status etcd --no-pager -n 0; journalctl -u etcd --no-pager -n 15 -o cat", {
        timeoutMs: 15_000,
      })
      .catch((error: unknown) => ({ stdout: String(error), stderr: "", exitCode: -1 }));
    parts.push(`--- ${n.name} ---\n${r.stdout}${r.stderr}`);
  }
  return parts.join("\n");
}

/** Paths, modes, owners, mtimes, link targets and checksums of what the phases write. */
async function snapshot(nodeName: string): Promise<string> {
  const r = await node(nodeName).exec(
    `set -o pipefail
     find ${WATCHED} \\( -type f -o -type l \\) -printf '%p %m %U:%G %T@ %l\\n' | sort
     find ${WATCHED} -type f -print0 | sort -z | xargs -0 sha256sum`,
    { timeoutMs: 20_000 },
  );
  expectOk(`snapshot of ${nodeName}`, r);
  return r.stdout;
}

async function etcdPid(nodeName: string): Promise<string> {
  const r = await node(nodeName).exec("systemctl show -p MainPID --value etcd.service");
  expectOk(`etcd's PID on ${nodeName}`, r);
  return r.stdout.trim();
}

describe.skipIf(!availability.ok)("the three-node lab's provisioners on real systemd", () => {
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "k8slab-provision-"));
    // The built-in lab, with no artifacts: Debian's etcd package stands in for the release.
    const labFile = join(root, "three-node.yaml");
    await writeFile(labFile, editedLab("three-node", OFFLINE));
    rendered = await timed("render", () => renderLabDir({ lab: labFile, cwd: root!, dir: "lab" }));
    const rootfs = await timed("rootfs", () => ensureRootfs());
    cluster = await timed("boot", () =>
      startNspawnCluster(
        lab().plan.nodes.map((n) => ({ name: n.name, ip: n.ip, prefix: PREFIX })),
        { bootTimeoutMs: 90_000 },
      ),
    );
    console.error(`[provision] rootfs ${rootfs}; cluster ${cluster.id}`);
    for (const n of lab().plan.nodes) {
      await node(n.name).copyIn(
        join(lab().dir, "provision", n.name),
        `/vagrant/provision/${n.name}`,
      );
      await uploadPki(n.name);
    }
    for (const phase of ["base", "pki"] as const) {
      for (const [name, r] of await runPhaseOnAll(phase)) firstRun.set(`${name} ${phase}`, r);
    }
    // Vagrant provisions master first: flannel-config meets no etcd at all.
    beforeEtcd = await runPhase("master", "flannel-config");
    for (const [name, r] of await runPhaseOnAll("etcd")) firstRun.set(`${name} etcd`, r);
    try {
      await waitForQuorum("etcd quorum after the first etcd phase");
    } catch (error) {
      throw new Error(`${String(error)}\n${await etcdJournals()}`, { cause: error });
    }
    for (const [name, r] of await runPhaseOnAll("flannel-config")) {
      firstRun.set(`${name} flannel-config`, r);
    }
  }, 600_000);

  afterAll(async () => {
    try {
      if (cluster) await timed("stop", () => cluster!.stop());
    } finally {
      if (root !== undefined) await rm(root, { recursive: true, force: true });
      if (timings.length > 0) console.error(`[provision] timings: ${timings.join(", ")}`);
    }
  }, 120_000);

  it("renders the lab at its addresses, without an artifacts phase", () => {
    const { plan, warnings } = lab();
    // With no artifacts, only that the master has no hyperkube program to build its image from.
    expect(warnings.map((w) => w.path)).toEqual(["images.build"]);
    expect(plan.lab.network.hostOnly).toBe(`192.168.56.0/${PREFIX}`);
    // No interface name: the scripts find the NIC that holds the node's address (here eth1).
    expect(plan.lab.network.interface).toBeUndefined();
    expect(plan.nodes.map((n) => ({ name: n.name, ip: n.ip }))).toEqual(LAB_NODES);
    expect(plan.etcdEndpoints).toBe(ENDPOINTS);
    for (const n of plan.nodes) {
      expect(n.phases.slice(0, 3), n.name).toEqual(["base", "pki", "etcd"]);
      expect(n.phases.includes("flannel-config"), n.name).toBe(n.name === "master");
    }
  });

  it("runs base, pki and etcd on every node and flannel-config on master", async () => {
    expect([...firstRun.keys()]).toEqual([
      ...LAB_NODES.map((n) => `${n.name} base`),
      ...LAB_NODES.map((n) => `${n.name} pki`),
      ...LAB_NODES.map((n) => `${n.name} etcd`),
      "master flannel-config",
    ]);
    for (const [what, r] of firstRun) {
      expectOk(what, r);
      expect(r.stdout, what).toMatch(/\] done/);
    }
    for (const n of LAB_NODES) {
      expect(firstRun.get(`${n.name} base`)!.stdout).toContain("wrote /etc/hosts");
      expect(firstRun.get(`${n.name} pki`)!.stdout).toContain("wrote /etc/kubernetes/pki/ca.pem");
      expect(firstRun.get(`${n.name} etcd`)!.stdout).toContain(
        "wrote /etc/systemd/system/etcd.service",
      );
      const state = await node(n.name).exec(
        [
          "test ! -e /tmp/k8slab-pki && echo upload-consumed",
          "stat -c '%a %n' /etc/kubernetes/pki/ca.pem /etc/kubernetes/pki/etcd-server-*-key.pem",
          "sed -n '/^# BEGIN k8slab$/,/^# END k8slab$/p' /etc/hosts",
          "systemctl is-enabled etcd.service; systemctl is-active etcd.service",
        ].join("; "),
      );
      expect(state.stdout).toBe(
        [
          "upload-consumed",
          "644 /etc/kubernetes/pki/ca.pem",
          `600 /etc/kubernetes/pki/etcd-server-${n.name}-key.pem`,
          "# BEGIN k8slab",
          ...LAB_NODES.map((m) => `${m.ip} ${m.name}`),
          "# END k8slab",
          "enabled",
          "active",
          "",
        ].join("\n"),
      );
    }
    // Each node holds only its own keys: minions get no apiserver or service-account key.
    const minionKeys = await node("minion1").exec("ls /etc/kubernetes/pki");
    expect(minionKeys.stdout).not.toMatch(/apiserver|service-account|ca-key|minion2|master/);
  });

  it("has etcd quorum over the lab's PKI on the lab's addresses", async () => {
    const health = await node("master").exec(
      `${etcdctl3("etcd-client-apiserver", "endpoint health")} 2>&1`,
      { timeoutMs: 20_000 },
    );
    expectOk("endpoint health", health);
    for (const n of LAB_NODES) expect(health.stdout).toContain(`https://${n.ip}:2379 is healthy`);

    const members = await node("master").exec(
      etcdctl3("etcd-client-apiserver", "member list --write-out=simple"),
      { timeoutMs: 20_000 },
    );
    expectOk("member list", members);
    const lines = members.stdout.trim().split("\n");
    expect(lines).toHaveLength(3);
    for (const n of LAB_NODES) {
      expect(lines.some((l) => l.includes(`, started, ${n.name}, https://${n.ip}:2380, `))).toBe(
        true,
      );
    }

    // A member listens on its private address (and loopback for clients), nowhere else.
    for (const n of LAB_NODES) {
      const listening = await node(n.name).exec(
        "ss -Hltnp | grep '\"etcd\"' | awk '{print $4}' | sort",
      );
      expect(listening.stdout.trim().split("\n"), n.name).toEqual(
        [`${n.ip}:2379`, `${n.ip}:2380`, "127.0.0.1:2379"].sort(),
      );
    }

    // Client certificates are required (--client-cert-auth): the same request with and without.
    const pki = lab().plan.paths.pki;
    const health2 = `https://${LAB_NODES[2].ip}:2379/health`;
    const curl = `curl -sS --max-time 5 --cacert ${pki}/etcd-ca.pem`;
    const withCert = await node("minion2").exec(
      `${curl} --cert ${pki}/etcd-client-flannel.pem --key ${pki}/etcd-client-flannel-key.pem ${health2}`,
      { timeoutMs: 20_000 },
    );
    expectOk("curl /health with a client certificate", withCert);
    expect(withCert.stdout).toContain('"health":"true"');
    const anonymous = await node("minion2").exec(`${curl} ${health2}`, { timeoutMs: 20_000 });
    expect(anonymous.exitCode, describeResult("curl without a certificate", anonymous)).not.toBe(0);
  });

  it("serves flannel's network config from etcd's v2 keyspace", async () => {
    const expected = JSON.stringify(POD_NETWORK);
    const { cluster: c } = lab().lab;
    expect({
      Network: c.podNetwork,
      SubnetLen: c.podSubnetLength,
      Backend: { Type: c.flannelBackend },
    }).toEqual(POD_NETWORK);
    expect(firstRun.get("master flannel-config")!.stdout).toContain(
      `flannel network written to etcd: ${expected}`,
    );
    // Read where flanneld reads it: on each node, with that node's flannel client certificate.
    for (const n of LAB_NODES) {
      const get = await node(n.name).exec(
        etcdctl2("etcd-client-flannel", "get /coreos.com/network/config"),
        { timeoutMs: 20_000 },
      );
      expectOk(`v2 get on ${n.name}`, get);
      expect(get.stdout.trim()).toBe(expected);
    }
    // v2 keys are invisible to the v3 API (design notes: etcd 3.4 needs --enable-v2).
    const v3 = await node("master").exec(
      etcdctl3("etcd-client-apiserver", "get --prefix /coreos.com --keys-only"),
      { timeoutMs: 20_000 },
    );
    expectOk("v3 get", v3);
    expect(v3.stdout.trim()).toBe("");
  });

  it("changes nothing on a second run of every phase", async () => {
    const before = new Map<string, { files: string; pid: string }>();
    for (const n of LAB_NODES) {
      before.set(n.name, { files: await snapshot(n.name), pid: await etcdPid(n.name) });
      expect(Number(before.get(n.name)!.pid), n.name).toBeGreaterThan(0);
    }
    const second = new Map<string, ExecResult>();
    for (const phase of ["base", "pki", "etcd", "flannel-config"] as const) {
      // A fresh upload, as `vagrant provision` runs pki-upload again before pki.
      if (phase === "pki") for (const n of LAB_NODES) await uploadPki(n.name);
      for (const [name, r] of await runPhaseOnAll(phase)) second.set(`${name} ${phase}`, r);
    }
    expect(second.size).toBe(3 * 3 + 1);
    for (const [what, r] of second) {
      expectOk(`second run: ${what}`, r);
      expect(r.stdout, what).toMatch(/\] done/);
      expect(r.stdout, what).not.toMatch(CHANGE_LOG);
      expect(r.stderr, what).toBe("");
    }
    for (const n of LAB_NODES) {
      expect(await snapshot(n.name), n.name).toBe(before.get(n.name)!.files);
      expect(await etcdPid(n.name), n.name).toBe(before.get(n.name)!.pid);
      const upload = await node(n.name).exec("test ! -e /tmp/k8slab-pki");
      expect(upload.exitCode, `${n.name}: the second upload was consumed`).toBe(0);
    }
  });

  it("names the failing phase and says to wait for quorum", async () => {
    const hint = "run this phase again once a majority of etcd members run";
    // 1. Before any member ran (Vagrant's first pass over master).
    expect(beforeEtcd, "flannel-config before etcd").toBeDefined();
    expect(beforeEtcd!.exitCode, describeResult("before etcd", beforeEtcd!)).not.toBe(0);
    expect(beforeEtcd!.stderr).toContain("phase flannel-config");
    expect(beforeEtcd!.stderr).toContain("etcd has no quorum yet");
    expect(beforeEtcd!.stderr).toContain(hint);

    // 2. One member down: two of three are a quorum, so the phase still succeeds.
    expectOk("stop etcd on minion2", await node("minion2").exec("systemctl stop etcd.service"));
    const degraded = await timed("flannel-config, 2 of 3 members", () =>
      runPhase("master", "flannel-config"),
    );
    expectOk("flannel-config with 2 of 3 members", degraded);
    expect(degraded.stdout).not.toMatch(CHANGE_LOG);

    // 3. Two members down: master's etcd runs but has no leader.
    expectOk("stop etcd on minion1", await node("minion1").exec("systemctl stop etcd.service"));
    const noQuorum = await timed("flannel-config, 1 of 3 members", () =>
      runPhase("master", "flannel-config"),
    );
    expect(noQuorum.exitCode, describeResult("no quorum", noQuorum)).not.toBe(0);
    expect(noQuorum.stderr).toContain("phase flannel-config on master");
    expect(noQuorum.stderr).toContain("etcd has no quorum yet");
    expect(noQuorum.stderr).toContain(hint);

    // 4. All members down, then master's back: its start waits for peers ("activating"), and
    //    running the etcd phase again meanwhile leaves that start alone.
    expectOk("stop etcd on master", await node("master").exec("systemctl stop etcd.service"));
    const restart = await timed("master etcd (restart)", () => runPhase("master", "etcd"));
    expectOk("etcd phase on master", restart);
    expect(restart.stdout).toContain("etcd.service started (was inactive)");
    // The job is queued (--no-block): wait until systemd has dispatched it.
    await waitFor(
      "master's etcd to be starting",
      async () => {
        const state = (await node("master").exec("systemctl is-active etcd.service")).stdout.trim();
        return state === "activating"
          ? { done: true, value: undefined }
          : { done: false, detail: state };
      },
      { attempts: 20, intervalMs: 250, timeoutMs: 5_000 },
    );
    const pending = await node("master").exec("systemctl show -p MainPID --value etcd.service");
    const rerun = await timed("master etcd (while activating)", () => runPhase("master", "etcd"));
    expectOk("etcd phase on master while its start waits", rerun);
    expect(rerun.stdout).not.toMatch(CHANGE_LOG);
    expect(await etcdPid("master")).toBe(pending.stdout.trim());

    // 5. What the hint says works: the etcd phase brings the stopped members back.
    for (const name of ["minion1", "minion2"]) {
      const r = await timed(`${name} etcd (restart)`, () => runPhase(name, "etcd"));
      expectOk(`etcd phase on ${name}`, r);
      expect(r.stdout).toContain("etcd.service started (was inactive)");
    }
    await waitForQuorum("etcd quorum after restarting the members");
    const again = await runPhase("master", "flannel-config");
    expectOk("flannel-config after the restart", again);
    expect(again.stdout).not.toMatch(CHANGE_LOG);
  }, 120_000);
});
