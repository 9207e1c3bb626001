import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { createHash } from "node:crypto";
import { dirname, join } from "node:path";
import { artifactPath } from "../src/artifacts/index.js";
import { execa } from "execa";
import { packageRoot } from "../src/util/package-root.js";
import { cliArgv } from "./helpers/cli-process.js";
import { builtinText, editedLab } from "./helpers/labs.js";
import { seedCachedImage } from "./helpers/registry-images.js";
import { parseDocument } from "yaml";
import {
  nspawnAvailable,
  startNspawnCluster,
  type NspawnCluster,
} from "./helpers/nspawn-cluster.js";

/**
 * `k8slab create` end to end on real Linux nodes: the CLI runs in the bridge namespace of three
 * systemd-nspawn nodes at the lab's addresses (the host's side of a host-only network, with
 * 192.168.56.1), and a fake `vagrant` on PATH maps each provisioner run to the rendered script
 * run inside the node. Checks go over real HTTPS to a real etcd cluster with the lab's PKI.
 * Only the stages whose programs exist here are reached: etcd and the flannel network.
 */
const available = await nspawnAvailable();
const FAKES = join(packageRoot(), "test", "fixtures", "fake-vagrant-nspawn");
const CLI = cliArgv();

describe.skipIf(!available.ok)(
  `create on nspawn nodes${available.ok ? "" : ` (skipped: ${available.reason})`}`,
  () => {
    let cluster: NspawnCluster;
    let work: string;
    let env: Record<string, string>;
    let calls: string;

    beforeAll(async () => {
      work = await mkdtemp(join(tmpdir(), "k8slab-create-"));
      cluster = await startNspawnCluster([
        { name: "master", ip: "192.168.56.165", prefix: 24 },
        { name: "minion1", ip: "192.168.56.166", prefix: 24 },
        { name: "minion2", ip: "192.168.56.167", prefix: 24 },
      ]);
      await execa("ip", [
        "-n",
        cluster.bridgeNetns,
        "addr",
        "add",
        "192.168.56.1/24",
        "dev",
        "br0",
      ]);
      await writeFile(
        join(work, "nodes"),
        cluster.nodes.map((n) => `${n.name} ${n.leader}\n`).join(""),
      );
      await mkdir(join(work, "state"));
      calls = join(work, "calls.log");
      await writeFile(calls, "");
      // The seed's lab on libvirt, with Debian's etcd (in the nodes) standing in for the release
      // artifact. One small artifact is already in the host's cache (its URL is never contacted):
      // the VMs must get it from the host.
      const hello = "#!/bin/sh\necho hello from the host\n";
      const helloSha = createHash("sha256").update(hello).digest("hex");
      const helloUrl = "http://127.0.0.1:9/hello";
      const cached = artifactPath(join(work, "cache"), helloSha, helloUrl);
      await mkdir(dirname(cached), { recursive: true });
      await writeFile(cached, hello);
      // The addons' images, in the cache as a pull leaves them: the nodes get them from the host.
      const lab = parseDocument(builtinText("three-node")).toJS() as {
        images: Record<string, string>;
      };
      for (const key of ["kubeDns", "dnsmasq", "dnsSidecar", "dashboard"]) {
        await seedCachedImage(join(work, "cache"), lab.images[key]!);
      }
      await writeFile(
        join(work, "lab.yaml"),
        editedLab("three-node", [
          [
            ["images", "build"],
            ["hyperkube", "pause"],
          ],
          [["provider", "name"], "libvirt"],
          [["artifacts"], { hello: { url: helloUrl, sha256: helloSha, kind: "binary" } }],
        ]),
      );
      env = {
        PATH: `${FAKES}:${process.env.PATH ?? ""}`,
        HOME: work,
        K8SLAB_CACHE: join(work, "cache"),
        FAKE_VAGRANT_NODES: join(work, "nodes"),
        FAKE_VAGRANT_STATE: join(work, "state"),
        FAKE_VAGRANT_LOG: calls,
        K8SLAB_POLL_MS: "1000",
        CI: "1",
        NO_COLOR: "1",
      };
    }, 600_000);

    afterAll(async () => {
      await cluster?.stop();
      if (work) await rm(work, { recursive: true, force: true });
    });

    const k8slab = (args: string[], extra: Record<string, string> = {}) =>
      execa("ip", ["netns", "exec", cluster.bridgeNetns, ...CLI, ...args], {
        cwd: work,
        env: { ...env, ...extra },
        extendEnv: false,
        reject: false,
        all: true,
        timeout: 480_000,
      });

    const provisions = (log: string) => log.split("\n").filter((l) => l.startsWith("provision "));

    it("quorum is not done: a member whose etcd phase fails is named, and the stage fails", async () => {
      const t0 = Date.now();
      // 10 min x 0.3 = 3 min for the etcd stage; minion2's etcd phase fails every time.
      const run = await k8slab(["create", "lab.yaml", "--dir", "lab", "--until", "etcd"], {
        FAKE_VAGRANT_FAIL: "minion2:etcd",
        K8SLAB_DEADLINE_SCALE: "0.3",
      });
      console.log(`create --until etcd with a failing member: ${Date.now() - t0} ms`);
      expect(run.exitCode, run.all).toBe(1);
      expect(run.stderr).toMatch(/error: stage etcd did not converge/);
      expect(run.stderr).toMatch(
        /last seen: +2 of 3 etcd members healthy \(quorum\).*minion2: connection refused/,
      );
      expect(run.stderr).toMatch(/waiting on: minion2\n/);
      expect(run.stderr).toMatch(
        /provisioning failures: minion2 pass 1: phase etcd on minion2: failing on purpose/,
      );
      expect(run.stderr).toMatch(/next, look at: vagrant ssh minion2 -c 'sudo journalctl -u etcd/);
      const state = JSON.parse(await readFile(join(work, "lab", "state.json"), "utf8")) as {
        stages: Record<string, unknown>;
        phases: Record<string, Record<string, unknown>>;
      };
      expect(state.stages).toEqual({});
      expect(Object.keys(state.phases["master"]!)).toEqual(["base", "pki", "artifacts", "etcd"]);
      expect(Object.keys(state.phases["minion2"]!)).toEqual(["base", "pki", "artifacts"]);
      // Every node was provisioned in the first pass; later passes ran etcd on minion2 only.
      const calls1 = provisions(await readFile(calls, "utf8"));
      expect(calls1.slice(0, 3).sort()).toEqual(
        ["master", "minion1", "minion2"].map(
          (n) =>
            `provision ${n} --provision-with base,pki-upload,pki,artifacts,etcd --machine-readable`,
        ),
      );
      expect(new Set(calls1.slice(3))).toEqual(
        new Set(["provision minion2 --provision-with etcd --machine-readable"]),
      );
    });

    it("a second create runs only what did not succeed, heals a refused SSH connection, and reaches the flannel network", async () => {
      const before = (await readFile(calls, "utf8")).length;
      const t0 = Date.now();
      const run = await k8slab(["create", "lab.yaml", "--dir", "lab", "--until", "network"], {
        FAKE_VAGRANT_REFUSE_ONCE: "minion2",
      });
      console.log(`create --until network: ${Date.now() - t0} ms`);
      expect(run.exitCode, run.all).toBe(0);
      expect(run.all).toMatch(
        /stage etcd \(every etcd member is healthy\): done .*3 of 3 etcd members healthy, 3 listed/,
      );
      expect(run.all).toMatch(
        /stage network .*: done .*coreos\.com\/network\/config holds .*10\.1\.0\.0\/16/,
      );
      const state = JSON.parse(await readFile(join(work, "lab", "state.json"), "utf8")) as {
        stages: Record<string, unknown>;
      };
      expect(Object.keys(state.stages)).toEqual(["etcd", "network"]);
      const log = await readFile(calls, "utf8");
      expect(log).toMatch(
        /^up --no-provision --provider libvirt master minion1 minion2 --machine-readable$/m,
      );
      // Exactly what had not succeeded: etcd on minion2 (refused once, then run again).
      expect(provisions(log.slice(before))).toEqual([
        "provision minion2 --provision-with etcd --machine-readable",
        "provision minion2 --provision-with etcd --machine-readable",
        "provision master --provision-with flannel-config --machine-readable",
      ]);
      expect(run.all).toMatch(/pass 2, provisioning minion2: etcd/);
      expect(await readdir(join(work, "lab", "logs"))).not.toHaveLength(0);
      // Every VM fetched the artifact from the host's server and installed it.
      for (const node of cluster.nodes) {
        const out = await node.exec("/opt/k8slab/bin/hello");
        expect(out.stdout.trim(), node.name).toBe("hello from the host");
      }
      expect(run.all).toMatch(/artifacts: done served to the VMs at http:\/\/192\.168\.56\.1:\d+/);
    });

    it("a second create continues where it stopped: nothing is provisioned again", async () => {
      const before = await readFile(calls, "utf8");
      const run = await k8slab(["create", "lab.yaml", "--dir", "lab", "--until", "network"]);
      expect(run.exitCode, run.all).toBe(0);
      expect(run.all).toMatch(/pki: kept all \d+ certificates/);
      expect(run.all).toMatch(/stage etcd .*already done/);
      expect(run.all).toMatch(/stage network .*already done/);
      const added = (await readFile(calls, "utf8")).slice(before.length);
      expect(added).not.toMatch(/^(up|provision)/m);
    });

    it("status reports the VMs and three healthy etcd members", async () => {
      const run = await k8slab(["status", "--dir", "lab", "--json"]);
      expect(run.exitCode, run.all).toBe(0);
      const status = JSON.parse(run.stdout) as {
        machines: { name: string; state: string }[];
        etcd: { ok: boolean; members: { name: string }[] };
      };
      expect(status.machines.map((m) => `${m.name}=${m.state}`)).toEqual([
        "master=running",
        "minion1=running",
        "minion2=running",
      ]);
      expect(status.etcd.ok).toBe(true);
      expect(status.etcd.members.map((m) => m.name).sort()).toEqual([
        "master",
        "minion1",
        "minion2",
      ]);
    });

    it("off the lab's network, checks run on the master over ssh (no traffic from the host)", async () => {
      // The root namespace holds no address in 192.168.56.0/24: status must not probe from here.
      const run = await execa(CLI[0]!, [...CLI.slice(1), "status", "--dir", "lab", "--json"], {
        cwd: work,
        env,
        extendEnv: false,
        reject: false,
        all: true,
        timeout: 120_000,
      });
      expect(run.exitCode, run.all).toBe(0);
      const status = JSON.parse(run.stdout) as { etcd: { ok: boolean; detail: string } };
      expect(status.etcd.detail).toMatch(/^3 of 3 etcd members healthy/);
      const log = await readFile(calls, "utf8");
      expect(log).toMatch(/^ssh master -c sudo curl .*--cert .*etcd-client-apiserver\.pem/m);
    });

    it("provision --phase, ssh -c and kubeconfig work on the lab", async () => {
      const before = (await readFile(calls, "utf8")).length;
      const run = await k8slab(["provision", "--dir", "lab", "--phase", "base"]);
      expect(run.exitCode, run.all).toBe(0);
      expect(run.stderr).toMatch(/master: ran base\nminion1: ran base\nminion2: ran base/);
      const added = (await readFile(calls, "utf8")).slice(before);
      expect(added.trim().split("\n")).toEqual([
        "status --machine-readable", // provision checks the VMs first
        "provision master --provision-with base --machine-readable",
        "provision minion1 --provision-with base --machine-readable",
        "provision minion2 --provision-with base --machine-readable",
      ]);
      const ssh = await k8slab([
        "ssh",
        "minion2",
        "--dir",
        "lab",
        "-c",
        "hostname; systemctl is-active etcd",
      ]);
      expect(ssh.exitCode, ssh.all).toBe(0);
      expect(ssh.stdout.trim().split("\n")).toEqual(["minion2", "active"]);
      const unknown = await k8slab(["ssh", "minion9", "--dir", "lab"]);
      expect(unknown.exitCode).toBe(2);
      expect(unknown.stderr).toMatch(
        /no node "minion9" in lab three-node\nhint: nodes: master, minion1, minion2/,
      );
      const kc = await k8slab(["kubeconfig", "--dir", "lab"]);
      expect(kc.stdout).toBe(
        `${join(work, "lab", "pki", "admin.kubeconfig")}\nexport KUBECONFIG=${join(work, "lab", "pki", "admin.kubeconfig")}`,
      );
    });

    it("a stage that misses its deadline says which, what it waited for, what it saw, and collects journals", async () => {
      // 20 min x 0.01 = 12 s for the control plane, which cannot start here (no flanneld), while
      // master's provisioning hangs: the pass ends at the deadline too, not an hour later.
      const run = await k8slab(["create", "lab.yaml", "--dir", "lab", "--until", "control-plane"], {
        K8SLAB_DEADLINE_SCALE: "0.01",
        FAKE_VAGRANT_HANG: "master:flannel",
      });
      expect(run.exitCode, run.all).toBe(1);
      expect(run.stderr).toMatch(/error: stage control-plane did not converge/);
      expect(run.stderr).toMatch(/waited for: the API server answers \/healthz/);
      expect(run.stderr).toMatch(/last seen: +API server: connection refused/);
      expect(run.stderr).toMatch(/provisioning failures: .*flanneld is not installed/);
      expect(run.stderr).toMatch(/master pass 1: stopped at the stage's deadline/);
      expect(run.stderr).toMatch(/hint: logs and journals are in .*lab\/logs/);
      const logs = await readdir(join(work, "lab", "logs"));
      // The journals of the stage's units, from the nodes it waited on (all: flannel failed there).
      expect(logs).toEqual(
        expect.arrayContaining([
          "journal-control-plane-master.log",
          "journal-control-plane-minion1.log",
          "journal-control-plane-minion2.log",
        ]),
      );
      const journal = await readFile(
        join(work, "lab", "logs", "journal-control-plane-master.log"),
        "utf8",
      );
      expect(journal).toMatch(/=== journalctl -u kubelet/);
      expect(run.stderr).toMatch(/waiting on: master, minion1, minion2/);
      expect(run.stderr).toMatch(/next, look at: vagrant ssh master /);
      const state = JSON.parse(await readFile(join(work, "lab", "state.json"), "utf8")) as {
        stages: Record<string, unknown>;
      };
      expect(Object.keys(state.stages)).toEqual(["etcd", "network"]);
    });

    /** A stand-in for the API server (hyperkube cannot run here), inside master's namespace. */
    async function withStandInApiServer(fn: () => Promise<void>): Promise<void> {
      const master = cluster.nodes.find((n) => n.name === "master")!;
      const apiserver = execa(
        "nsenter",
        [
          `--net=/proc/${master.leader}/ns/net`,
          process.execPath,
          join(packageRoot(), "test", "fixtures", "fake-apiserver.mjs"),
          join(work, "lab", "pki"),
          master.ip,
          "master,minion1,minion2",
        ],
        { reject: false, timeout: 300_000, buffer: false },
      );
      try {
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(
            () => reject(new Error("the stand-in API server did not start")),
            15_000,
          );
          apiserver.stdout!.on("data", (chunk: Buffer) => {
            if (chunk.toString().includes("listening")) {
              clearTimeout(timer);
              resolve();
            }
          });
        });
        await fn();
      } finally {
        apiserver.kill("SIGTERM");
        await apiserver;
      }
    }

    it("an answering API server is not enough: the stage waits until every node's phases succeed", async () => {
      await withStandInApiServer(async () => {
        // 20 min x 0.01 = 12 s: /healthz is ok from the start, flanneld cannot be installed.
        const run = await k8slab(
          ["create", "lab.yaml", "--dir", "lab", "--until", "control-plane"],
          { K8SLAB_DEADLINE_SCALE: "0.01" },
        );
        expect(run.exitCode, run.all).toBe(1);
        expect(run.stderr).toMatch(
          /last seen: +API server \/healthz: ok, but phases have not succeeded on master: flannel, docker, kubelet, control-plane; minion1: flannel, docker; minion2: flannel, docker/,
        );
        const state = JSON.parse(await readFile(join(work, "lab", "state.json"), "utf8")) as {
          stages: Record<string, unknown>;
        };
        expect(Object.keys(state.stages)).toEqual(["etcd", "network"]);
      });
    });

    it("with an API server standing in for hyperkube, create converges through every stage", async () => {
      // Docker, the kubelet and the control plane cannot run in these nodes: their phases are
      // stubbed in the fake vagrant (logged), everything else is as before.
      const stubs = {
        FAKE_VAGRANT_STUB_PHASES: "flannel,docker,kubelet,control-plane,kube-proxy,addons",
      };
      await withStandInApiServer(async () => {
        const run = await k8slab(["create", "lab.yaml", "--dir", "lab", "--json"], stubs);
        expect(run.exitCode, run.all).toBe(0);
        const result = JSON.parse(run.stdout) as {
          complete: boolean;
          stages: { stage: string; status: string }[];
        };
        expect(result.complete).toBe(true);
        expect(result.stages.map((s) => `${s.stage}:${s.status}`)).toEqual([
          "etcd:skipped",
          "network:skipped",
          "control-plane:done",
          "nodes:done",
          "addons:done",
        ]);
        expect(run.stderr).toMatch(/stage nodes .*: done .*all 3 nodes Ready/);
        expect(run.stderr).toMatch(/stage addons .*: done .*addons running: kube-dns, dashboard/);
        const log = await readFile(calls, "utf8");
        expect(log).toMatch(/^stub minion2 kube-proxy$/m);
        expect(log).toMatch(/^stub master addons$/m);
        const before = log.length;
        const again = await k8slab(["create", "lab.yaml", "--dir", "lab"], stubs);
        expect(again.exitCode, again.all).toBe(0);
        expect((await readFile(calls, "utf8")).slice(before)).not.toMatch(/^(up|provision)/m);
      });
    });

    it("destroy --force removes the VMs and keeps the PKI", async () => {
      const run = await k8slab(["destroy", "--dir", "lab", "--force"]);
      expect(run.exitCode, run.all).toBe(0);
      expect(existsSync(join(work, "lab", "pki", "ca-key.pem"))).toBe(true);
      expect(existsSync(join(work, "lab", "state.json"))).toBe(false);
      const status = await k8slab(["status", "--dir", "lab", "--json"]);
      const parsed = JSON.parse(status.stdout) as { machines: { state: string }[] };
      expect(parsed.machines.every((m) => m.state === "not_created")).toBe(true);
    });
  },
);
