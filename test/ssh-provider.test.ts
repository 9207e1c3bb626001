import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { createHash } from "node:crypto";
import { dirname, join } from "node:path";
import { execa } from "execa";
import { artifactPath } from "../src/artifacts/index.js";
import { cliArgv } from "./helpers/cli-process.js";
import { editedLab, OFFLINE } from "./helpers/labs.js";
import {
  nspawnAvailable,
  startNspawnCluster,
  type NspawnCluster,
} from "./helpers/nspawn-cluster.js";
import {
  SSH_USERS,
  authorizeSshEverywhere,
  makeSshKey,
  type SshKey,
} from "./helpers/nspawn-sshd.js";

/**
 * The SSH provider on real sshd (issue 15): three systemd-nspawn nodes run openssh-server, and
 * k8slab reaches them with OpenSSH's client from the bridge namespace (the host's side of the
 * lab network, 192.168.56.1), as it would reach boards or servers. No Vagrant, real or fake, is
 * on PATH. Checks go over real HTTPS to a real etcd cluster with the lab's PKI; as on nspawn
 * through fake Vagrant, the stages whose programs exist here are reached: etcd and the network.
 */
const available = await nspawnAvailable();
const CLI = cliArgv();
const NODES = [
  { name: "master", ip: "192.168.56.165", prefix: 24 },
  { name: "minion1", ip: "192.168.56.166", prefix: 24 },
  { name: "minion2", ip: "192.168.56.167", prefix: 24 },
];

/** What the doctor or a failed create might have left on a node: none of it may change. */
const LISTING =
  "find /etc /opt /usr/local /tmp /var/lib /root /home -xdev -not -path '/var/lib/systemd/*' 2>/dev/null | sort";
const LINKS = String.raw`ip -o link | sed -E 's/^[0-9]+: ([^:@]+)[:@].*/\1/' | sort`;

describe.skipIf(!available.ok)(
  `the ssh provider on nspawn nodes running sshd${available.ok ? "" : ` (skipped: ${available.reason})`}`,
  () => {
    let cluster: NspawnCluster;
    let work: string;
    let env: Record<string, string>;
    let key: SshKey;

    beforeAll(async () => {
      work = await mkdtemp(join(tmpdir(), "k8slab-ssh-"));
      cluster = await startNspawnCluster(NODES);
      await execa("ip", [
        "-n",
        cluster.bridgeNetns,
        "addr",
        "add",
        "192.168.56.1/24",
        "dev",
        "br0",
      ]);
      key = await makeSshKey(work);
      await authorizeSshEverywhere(cluster, key);
      // One small artifact is already in the host's cache (its URL is never contacted): the
      // nodes must get it from the host, at the host's address toward them.
      const hello = "#!/bin/sh\necho hello from the host\n";
      const helloSha = createHash("sha256").update(hello).digest("hex");
      const helloUrl = "http://127.0.0.1:9/hello";
      const cached = artifactPath(join(work, "cache"), helloSha, helloUrl);
      await mkdir(dirname(cached), { recursive: true });
      await writeFile(cached, hello);
      const artifacts = { hello: { url: helloUrl, sha256: helloSha, kind: "binary" } };
      await writeFile(
        join(work, "lab.yaml"),
        editedLab("three-node", [
          ...OFFLINE,
          [["provider", "name"], "ssh"],
          [
            ["ssh"],
            { user: SSH_USERS.sudo, identityFile: key.identityFile, connectTimeoutSeconds: 5 },
          ],
          [["artifacts"], artifacts],
        ]),
      );
      // For the doctor: minion1 will refuse SSH, minion2's user has no sudo rights.
      await writeFile(
        join(work, "broken.yaml"),
        editedLab("three-node", [
          ...OFFLINE,
          [["provider", "name"], "ssh"],
          [
            ["ssh"],
            { user: SSH_USERS.sudo, identityFile: key.identityFile, connectTimeoutSeconds: 5 },
          ],
          [["nodes", 2, "ssh"], { user: SSH_USERS.noSudo }],
          [["artifacts"], artifacts],
        ]),
      );
      // No vagrant anywhere on PATH: an SSH lab must not need it.
      env = {
        PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        HOME: work,
        K8SLAB_CACHE: join(work, "cache"),
        K8SLAB_POLL_MS: "1000",
        K8SLAB_DEADLINE_SCALE: process.env.K8SLAB_DEADLINE_SCALE ?? "1",
        CI: "1",
        NO_COLOR: "1",
      };
    }, 600_000);

    afterAll(async () => {
      await cluster?.stop();
      if (work) await rm(work, { recursive: true, force: true });
    });

    const k8slab = (args: string[], timeout = 480_000, extra: Record<string, string> = {}) =>
      execa("ip", ["netns", "exec", cluster.bridgeNetns, ...CLI, ...args], {
        cwd: work,
        env: { ...env, ...extra },
        extendEnv: false,
        reject: false,
        all: true,
        timeout,
      });
    const node = (name: string) => cluster.nodes.find((n) => n.name === name)!;
    const listings = () =>
      Promise.all(cluster.nodes.map(async (n) => (await n.exec(LISTING)).stdout));
    /** What reset must give back: the files, the links, and the state of the packaged etcd. */
    const machineState = () =>
      Promise.all(
        cluster.nodes.map(async (n) => ({
          files: (await n.exec(LISTING)).stdout,
          links: (await n.exec(LINKS)).stdout,
          etcd: (await n.exec("systemctl is-enabled etcd; systemctl is-active etcd")).stdout,
        })),
      );
    let pristine: Awaited<ReturnType<typeof machineState>> | undefined;

    it("doctor names the node that refuses SSH and the user without sudo, and changes nothing", async () => {
      const stopped = await node("minion1").exec(
        "systemctl stop ssh.service && ! systemctl is-active ssh.service",
      );
      expect(stopped.exitCode, stopped.stderr).toBe(0);
      try {
        const before = await listings();
        const t0 = Date.now();
        const run = await k8slab(["doctor", "broken.yaml", "--json"], 120_000);
        console.log(`doctor on a broken SSH lab: ${Date.now() - t0} ms`);
        expect(run.exitCode, run.all).toBe(1);
        const checks = (
          JSON.parse(run.stdout) as { checks: { name: string; verdict: string; detail: string }[] }
        ).checks;
        const verdict = (name: string) => checks.find((c) => c.name === name);
        expect(verdict("master: ssh"), run.stdout).toMatchObject({ verdict: "ok" });
        expect(verdict("master: sudo")?.verdict).toBe("ok");
        expect(verdict("master: architecture")?.verdict).toBe("ok");
        // These nodes share the host's kernel: cgroup v1 controllers and its modules.
        expect(verdict("master: cgroups")).toMatchObject({
          verdict: "ok",
          detail: expect.stringMatching(/^cgroup v1 with cpu, cpuacct, cpuset, memory/),
        });
        expect(verdict("master: kernel")).toMatchObject({
          verdict: "ok",
          detail: expect.stringMatching(/vxlan (loaded|built-in)/),
        });
        // A user without sudo still gets the checks that need no root.
        expect(verdict("minion2: kernel")?.verdict).toBe("ok");
        expect(verdict("minion1: ssh")).toMatchObject({
          verdict: "fail",
          detail: expect.stringMatching(
            /lab@192\.168\.56\.166:22 does not answer over SSH: .*[Cc]onnection refused/,
          ),
        });
        // Nothing else is asked of a node that does not answer.
        expect(checks.filter((c) => c.name.startsWith("minion1:")).map((c) => c.name)).toEqual([
          "minion1: ssh",
        ]);
        expect(verdict("minion2: ssh")?.verdict).toBe("ok");
        expect(verdict("minion2: sudo")).toMatchObject({
          verdict: "fail",
          detail: expect.stringMatching(
            /^nosudo cannot run commands as root without a password: sudo: .*password is required/,
          ),
        });
        // Text output names them too, and the exit code says it failed.
        const text = await k8slab(["doctor", "broken.yaml"], 120_000);
        expect(text.exitCode).toBe(1);
        expect(text.stdout).toMatch(/^FAIL minion1: ssh: /m);
        expect(text.stdout).toMatch(/^FAIL minion2: sudo: /m);
        expect(text.stderr).toMatch(/checks failed: .*minion1: ssh, minion2: sudo/);
        // create stops at the doctor: nothing is written, on the nodes or here.
        const create = await k8slab(
          ["create", "broken.yaml", "--dir", "broken", "--until", "etcd"],
          120_000,
        );
        expect(create.exitCode, create.all).toBe(1);
        expect(create.stderr).toMatch(/host check failed: minion1: ssh: /);
        expect(existsSync(join(work, "broken"))).toBe(false);
        expect(await listings()).toEqual(before);
        expect(existsSync(join(work, ".ssh"))).toBe(false);
      } finally {
        const started = await node("minion1").exec(
          "systemctl start ssh.service && systemctl is-active ssh.service",
        );
        expect(started.exitCode, started.stderr).toBe(0);
      }
    });

    it("create reaches etcd quorum and the flannel network over SSH, with the lab's PKI", async () => {
      pristine = await machineState();
      const t0 = Date.now();
      const run = await k8slab(["create", "lab.yaml", "--dir", "lab", "--until", "network"]);
      console.log(`create --until network over ssh: ${Date.now() - t0} ms`);
      expect(run.exitCode, run.all).toBe(0);
      expect(run.all).toMatch(/machines: done 3 nodes answer over SSH/);
      expect(run.all).toMatch(
        /stage etcd \(every etcd member is healthy\): done .*3 of 3 etcd members healthy, 3 listed/,
      );
      expect(run.all).toMatch(
        /stage network .*: done .*coreos\.com\/network\/config holds .*10\.1\.0\.0\/16/,
      );
      // The host's address toward the nodes, not a guessed .1 of a host-only network.
      expect(run.all).toMatch(/artifacts: done served to the VMs at http:\/\/192\.168\.56\.1:\d+/);
      const lab = join(work, "lab");
      expect(existsSync(join(lab, "Vagrantfile"))).toBe(false);
      const state = JSON.parse(await readFile(join(lab, "state.json"), "utf8")) as {
        stages: Record<string, unknown>;
        phases: Record<string, Record<string, unknown>>;
      };
      expect(Object.keys(state.stages)).toEqual(["etcd", "network"]);
      expect(Object.keys(state.phases["minion2"]!)).toEqual(["base", "pki", "artifacts", "etcd"]);
      // Host keys went to the lab's own known_hosts, one line per node.
      const known = await readFile(join(lab, "known_hosts"), "utf8");
      expect(known.trim().split("\n")).toHaveLength(3);
      expect(existsSync(join(work, ".ssh", "known_hosts"))).toBe(false);
      for (const n of cluster.nodes) {
        const hello = await n.exec("/opt/k8slab/bin/hello");
        expect(hello.stdout.trim(), n.name).toBe("hello from the host");
        // Each node holds its own certificates and never the CA key; the upload is gone.
        const pki = await n.exec("ls /etc/kubernetes/pki; test ! -e /tmp/k8slab-pki");
        expect(pki.exitCode, `${n.name}: ${pki.stderr}`).toBe(0);
        expect(pki.stdout).toMatch(/^ca\.pem$/m);
        expect(pki.stdout).toMatch(
          new RegExp(`^etcd-peer-${n.name}\\.pem$|^etcd-${n.name}\\.pem$|${n.name}`, "m"),
        );
        expect(pki.stdout).not.toMatch(/ca-key\.pem/);
      }
      // Every phase ran as the login user through sudo, logged in full per node.
      const logs = await readdir(join(lab, "logs"));
      expect(logs.filter((l) => /-ssh-provision-minion1\.log$/.test(l)).length).toBeGreaterThan(0);
    });

    it("a second create does nothing; status reports the nodes and etcd; ssh -c runs there", async () => {
      const logsBefore = await readdir(join(work, "lab", "logs"));
      const run = await k8slab(["create", "lab.yaml", "--dir", "lab", "--until", "network"]);
      expect(run.exitCode, run.all).toBe(0);
      expect(run.all).toMatch(/stage etcd .*already done/);
      expect(run.all).toMatch(/stage network .*already done/);
      const added = (await readdir(join(work, "lab", "logs"))).filter(
        (l) => !logsBefore.includes(l),
      );
      expect(added).toEqual([]);
      const status = await k8slab(["status", "--dir", "lab", "--json"], 120_000);
      expect(status.exitCode, status.all).toBe(0);
      const parsed = JSON.parse(status.stdout) as {
        machines: { name: string; state: string; provider: string }[];
        etcd: { ok: boolean; members: { name: string }[] };
      };
      expect(parsed.machines.map((m) => `${m.name}=${m.state}/${m.provider}`)).toEqual([
        "master=running/ssh",
        "minion1=running/ssh",
        "minion2=running/ssh",
      ]);
      expect(parsed.etcd.ok).toBe(true);
      const text = await k8slab(["status", "--dir", "lab"], 120_000);
      expect(text.stdout).toMatch(/^ {2}node minion1: running \(ssh\)$/m);
      const ssh = await k8slab(
        ["ssh", "minion2", "--dir", "lab", "-c", "hostname; id -un; systemctl is-active etcd"],
        60_000,
      );
      expect(ssh.exitCode, ssh.all).toBe(0);
      expect(ssh.stdout.trim().split("\n")).toEqual(["minion2", "lab", "active"]);
      const failing = await k8slab(["ssh", "minion2", "--dir", "lab", "-c", "exit 7"], 60_000);
      expect(failing.exitCode).toBe(7);
    });

    it("provision --phase runs over ssh; a failing phase is named, with journals and a k8slab ssh hint", async () => {
      const provision = await k8slab(["provision", "--dir", "lab", "--phase", "base"], 240_000);
      expect(provision.exitCode, provision.all).toBe(0);
      expect(provision.stderr).toMatch(/master: ran base\nminion1: ran base\nminion2: ran base/);
      // 20 min x 0.01 = 12 s for the control plane, which cannot start here (no flanneld).
      const run = await k8slab(
        ["create", "lab.yaml", "--dir", "lab", "--until", "control-plane"],
        240_000,
        { K8SLAB_DEADLINE_SCALE: "0.01" },
      );
      expect(run.exitCode, run.all).toBe(1);
      expect(run.stderr).toMatch(/error: stage control-plane did not converge/);
      expect(run.stderr).toMatch(
        /provisioning failures: .*master pass 1: phase flannel on master: /,
      );
      expect(run.stderr).toMatch(/next, look at: k8slab ssh master -c 'sudo docker ps -a/);
      const journal = await readFile(
        join(work, "lab", "logs", "journal-control-plane-master.log"),
        "utf8",
      );
      expect(journal).toMatch(/=== journalctl -u kubelet/);
    });

    it("k8slab reset over SSH gives every node back as it was before create", async () => {
      expect(pristine, "the create test records the nodes first").toBeDefined();
      const changed = await machineState();
      expect(changed).not.toEqual(pristine);
      const t0 = Date.now();
      const run = await k8slab(["reset", "--dir", "lab"], 480_000);
      console.log(`reset over ssh: ${Date.now() - t0} ms`);
      expect(run.exitCode, run.all).toBe(0);
      expect(run.stderr).toMatch(/reset master, minion1, minion2/);
      const after = await machineState();
      // Per node, what differs from before create (line by line): nothing.
      const differences = after.map((state, i) =>
        (["files", "links", "etcd"] as const).flatMap((part) => {
          const was = new Set(pristine![i]![part].split("\n"));
          const is = new Set(state[part].split("\n"));
          return [
            ...[...is].filter((l) => !was.has(l)).map((l) => `+ ${part} ${l}`),
            ...[...was].filter((l) => !is.has(l)).map((l) => `- ${part} ${l}`),
          ];
        }),
      );
      expect(differences).toEqual([[], [], []]);
      expect(after).toEqual(pristine);
      // A second reset finds nothing to undo and changes nothing.
      const again = await k8slab(["reset", "--dir", "lab"], 480_000);
      expect(again.exitCode, again.all).toBe(0);
      expect(await machineState()).toEqual(pristine);
    });

    it("a node that stops answering is unreachable in status; destroy refuses an SSH lab", async () => {
      await node("minion2").exec("systemctl stop ssh.service");
      try {
        const status = await k8slab(["status", "--dir", "lab", "--json"], 120_000);
        expect(status.exitCode).toBe(1);
        const parsed = JSON.parse(status.stdout) as {
          machines: { name: string; state: string }[];
          problems: string[];
        };
        expect(parsed.machines.find((m) => m.name === "minion2")?.state).toBe("unreachable");
        expect(parsed.problems).toContain("minion2 is unreachable");
      } finally {
        await node("minion2").exec("systemctl start ssh.service");
      }
      const destroy = await k8slab(["destroy", "--dir", "lab", "--force"], 60_000);
      expect(destroy.exitCode).toBe(1);
      expect(destroy.stderr).toMatch(
        /k8slab did not create: it does not destroy them\nhint: k8slab reset three-node/,
      );
      expect(existsSync(join(work, "lab", "pki", "ca-key.pem"))).toBe(true);
      // --purge deletes only the lab directory: the nodes are not touched.
      const untouched = await listings();
      const purge = await k8slab(["destroy", "--dir", "lab", "--force", "--purge"], 60_000);
      expect(purge.exitCode, purge.all).toBe(0);
      expect(purge.stderr).toMatch(
        /deleted .*lab; the machines of lab three-node are as they were/,
      );
      expect(existsSync(join(work, "lab"))).toBe(false);
      expect(await listings()).toEqual(untouched);
    });
  },
);
