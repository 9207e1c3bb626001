/**
 * The chain, end to end: `k8slab create three-node --provider libvirt --until etcd` through a real
 * `vagrant up` of three Debian VMs under QEMU, real SSH provisioning with the rendered scripts,
 * and etcd quorum over the lab's TLS detected by k8slab's own checks. Everything runs inside a
 * network namespace (and private libvirtd) the test creates. Minutes long: only with
 * K8SLAB_E2E=1 (`npm run test:e2e`, which CI runs).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cliArgv } from "./helpers/cli-process.js";
import {
  ensureTestBox,
  libvirtAvailable,
  startLibvirtEnv,
  type LibvirtEnv,
  type LibvirtExecResult,
} from "./helpers/libvirt-env.js";
import { editedLab } from "./helpers/labs.js";

const E2E = process.env.K8SLAB_E2E === "1";
const availability = E2E ? await libvirtAvailable() : { ok: false, reason: "K8SLAB_E2E is not 1" };
const BOX = "k8slab-test/bookworm";
const CREATE_TIMEOUT_MS = 1_200_000;
const STEP_TIMEOUT_MS = 300_000;

const timings: string[] = [];
function timed(step: string, since: number): void {
  const line = `[e2e] ${step}: ${((Date.now() - since) / 1000).toFixed(1)} s`;
  timings.push(line);
  console.error(line);
}

describe.skipIf(!E2E)("k8slab create on real VMs (vagrant-libvirt)", () => {
  let env: LibvirtEnv | undefined;
  let work = "";
  const cli = async (args: string[], timeoutMs = STEP_TIMEOUT_MS): Promise<LibvirtExecResult> => {
    const [node, ...rest] = cliArgv();
    const result = await env!.exec(node!, [...rest, ...args], {
      cwd: work,
      env: { K8SLAB_CACHE: join(work, "cache"), CI: "1", NO_COLOR: "1" },
      timeoutMs,
      onLine: (line) => console.error(`[k8slab ${args[0]}] ${line}`),
    });
    return result;
  };
  const explain = async (r: LibvirtExecResult) =>
    `${r.all.split("\n").slice(-60).join("\n")}\n${env ? await env.diagnostics(20) : ""}`;
  const provisionLogs = async () =>
    (await readdir(join(work, "lab", "logs"))).filter((f) => /vagrant-(provision|up)/.test(f));

  beforeAll(async () => {
    if (!availability.ok)
      throw new Error(`K8SLAB_E2E=1 but this machine cannot run it: ${availability.reason}`);
    let t = Date.now();
    const box = await ensureTestBox({ onProgress: (l) => console.error(`[box] ${l}`) });
    timed("test box ready", t);
    t = Date.now();
    env = await startLibvirtEnv({ onProgress: (l) => console.error(`[env] ${l}`) });
    timed("libvirtd and virtlogd started in a new network namespace", t);
    work = await mkdtemp(join(tmpdir(), "k8slab-e2e-create-"));
    t = Date.now();
    const add = await env.exec("vagrant", ["box", "add", "--name", BOX, box], {
      cwd: work,
      timeoutMs: 180_000,
    });
    if (add.exitCode !== 0) throw new Error(await explain(add));
    timed("vagrant box add", t);
    // What a user would write to pick a box: the seed lab, with the test box, software
    // emulation, less memory, and Debian's etcd (in the box) instead of downloaded artifacts.
    await writeFile(
      join(work, "three-node.yaml"),
      editedLab("three-node", [
        [["box"], { name: BOX }],
        [["provider"], { name: "libvirt", libvirt: { driver: "qemu" } }],
        [["nodes", 0, "memory"], 1024],
        [["nodes", 1, "memory"], 768],
        [["nodes", 2, "memory"], 768],
        [["nodes", 0, "cpus"], 1],
        [["artifacts"], {}],
      ]),
    );
  }, 2_400_000);

  afterAll(async () => {
    try {
      await env?.stop();
      expect(await env?.leftovers()).toEqual([]);
    } finally {
      if (work) await rm(work, { recursive: true, force: true });
      console.error(timings.join("\n"));
    }
  }, 600_000);

  it(
    "create --until etcd boots three VMs, provisions them over SSH and reaches etcd quorum",
    async () => {
      const t = Date.now();
      const run = await cli(
        ["create", "three-node.yaml", "--dir", "lab", "--provider", "libvirt", "--until", "etcd"],
        CREATE_TIMEOUT_MS,
      );
      timed("k8slab create --until etcd (3 VMs up, provisioned, quorum)", t);
      expect(run.exitCode, await explain(run)).toBe(0);
      // Done at quorum: a majority healthy and every member listed (status shows all three later).
      expect(run.all).toMatch(
        /stage etcd \(etcd has quorum\): done .*[23] of 3 etcd members healthy .*3 listed/,
      );
      expect(run.all).toMatch(/checks via https/);
      const state = JSON.parse(await readFile(join(work, "lab", "state.json"), "utf8")) as {
        stages: Record<string, unknown>;
      };
      expect(Object.keys(state.stages)).toEqual(["etcd"]);
      const provisioned = (await readdir(join(work, "lab", "logs"))).filter((f) =>
        f.includes("provision"),
      );
      expect(provisioned.length).toBeGreaterThanOrEqual(3);
    },
    CREATE_TIMEOUT_MS + 60_000,
  );

  it(
    "a second create --until etcd does nothing",
    async () => {
      const before = await provisionLogs();
      const t = Date.now();
      const run = await cli(["create", "three-node.yaml", "--dir", "lab", "--until", "etcd"]);
      timed("second create --until etcd", t);
      expect(run.exitCode, await explain(run)).toBe(0);
      expect(run.all).toMatch(/stage etcd .*already done/);
      expect(await provisionLogs()).toEqual(before);
    },
    STEP_TIMEOUT_MS + 60_000,
  );

  it(
    "status reports three running VMs and three healthy etcd members",
    async () => {
      const t = Date.now();
      const run = await cli(["status", "--dir", "lab", "--json"]);
      timed("status", t);
      expect(run.exitCode, await explain(run)).toBe(0);
      const status = JSON.parse(run.stdout) as {
        machines: { name: string; state: string }[];
        etcd: { ok: boolean; members: { name: string; peerURLs: string[] }[] };
      };
      expect(status.machines.map((m) => `${m.name}=${m.state}`)).toEqual([
        "master=running",
        "minion1=running",
        "minion2=running",
      ]);
      expect(status.etcd.ok).toBe(true);
      expect(status.etcd.members.map((m) => m.peerURLs[0]).sort()).toEqual([
        "https://192.168.56.165:2380",
        "https://192.168.56.166:2380",
        "https://192.168.56.167:2380",
      ]);
    },
    STEP_TIMEOUT_MS + 60_000,
  );

  it(
    "destroy --force removes every VM",
    async () => {
      const t = Date.now();
      const run = await cli(["destroy", "--dir", "lab", "--force"]);
      timed("destroy --force", t);
      expect(run.exitCode, await explain(run)).toBe(0);
      const list = await env!.exec("virsh", ["-q", "list", "--all", "--name"], {
        timeoutMs: 60_000,
      });
      expect(list.stdout.trim()).toBe("");
    },
    STEP_TIMEOUT_MS + 60_000,
  );
});
