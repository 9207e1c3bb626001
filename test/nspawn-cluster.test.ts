import { execa } from "execa";
import { existsSync, promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { NspawnCluster } from "./helpers/nspawn-cluster.js";
import { ensureRootfs, nspawnAvailable, startNspawnCluster } from "./helpers/nspawn-cluster.js";
import { netnsNames, processesMentioning } from "./helpers/host.js";

const availability = await nspawnAvailable();
if (!availability.ok) {
  console.warn(`nspawn cluster tests skipped: ${availability.reason ?? "unknown reason"}`);
}

const NODES = [
  { name: "master", ip: "192.168.56.165", prefix: 24 },
  { name: "minion1", ip: "192.168.56.166", prefix: 24 },
  { name: "minion2", ip: "192.168.56.167", prefix: 24 },
];

describe.skipIf(!availability.ok)("nspawn cluster harness", () => {
  let cluster: NspawnCluster | undefined;

  beforeAll(async () => {
    const t0 = Date.now();
    // debootstrap's per-package lines are left out; its summary and errors come through.
    const rootfs = await ensureRootfs({
      onProgress: (msg) => {
        if (!/^I: (Retrieving|Validating|Extracting|Unpacking|Configuring|Installing)/.test(msg)) {
          console.error(`[rootfs] ${msg}`);
        }
      },
    });
    const t1 = Date.now();
    cluster = await startNspawnCluster(NODES, { bootTimeoutMs: 90_000 });
    const t2 = Date.now();
    console.error(
      `[nspawn] rootfs ${rootfs} ready in ${t1 - t0} ms; ${NODES.length} nodes booted in ${t2 - t1} ms`,
    );
  }, 1_800_000);

  afterAll(async () => {
    await cluster?.stop();
  }, 120_000);

  const nodes = () => {
    if (!cluster) throw new Error("cluster did not start");
    return cluster.nodes;
  };

  it("gives every node its eth1 address, hostname and a running systemd", async () => {
    for (const [i, node] of nodes().entries()) {
      const spec = NODES[i]!;
      const addr = await node.exec("ip -4 -o addr show dev eth1");
      expect(addr.exitCode).toBe(0);
      expect(addr.stdout).toContain(`inet ${spec.ip}/${spec.prefix}`);
      const state = await node.exec("hostname; systemctl is-system-running");
      expect(state.stdout.trim().split("\n")).toEqual([
        spec.name,
        expect.stringMatching(/^(running|degraded)$/),
      ]);
      // etcd is installed but not started at boot.
      const etcd = await node.exec(
        "command -v etcd etcdctl; systemctl is-enabled etcd; systemctl is-active etcd",
      );
      expect(etcd.stdout).toContain("/usr/bin/etcd\n");
      expect(etcd.stdout).toContain("/usr/bin/etcdctl\n");
      expect(etcd.stdout).toMatch(/disabled\ninactive/);
    }
  });

  it("connects the nodes over the bridge", async () => {
    const [a, b, c] = nodes();
    const ping = await a!.exec(`ping -c 2 -W 2 ${b!.ip} && ping -c 1 -W 2 ${c!.ip}`, {
      timeoutMs: 20_000,
    });
    expect(ping.stderr).toBe("");
    expect(ping.exitCode).toBe(0);
    expect(ping.stdout).toContain(`2 received`);
  });

  it("runs transient units and the journal", async () => {
    const node = nodes()[1]!;
    const start = await node.exec(
      "systemd-run --unit=k8slab-probe --property=Type=simple sleep 300 && systemctl is-active k8slab-probe",
    );
    expect(start.exitCode, start.stderr).toBe(0);
    expect(start.stdout.trim().split("\n").at(-1)).toBe("active");
    const journal = await node.exec("journalctl -u k8slab-probe --no-pager -o cat");
    expect(journal.exitCode).toBe(0);
    expect(journal.stdout).toContain("k8slab-probe");
    const stop = await node.exec("systemctl stop k8slab-probe; systemctl is-active k8slab-probe");
    expect(stop.stdout.trim()).toBe("inactive");
  });

  it("copies files and directories in, and reports exit codes and timeouts", async () => {
    const node = nodes()[2]!;
    const tmp = await fs.mkdtemp(path.join(os.tmpdir(), "k8slab-copy-"));
    try {
      await fs.mkdir(path.join(tmp, "dir", "sub"), { recursive: true });
      await fs.writeFile(path.join(tmp, "dir", "sub", "a.txt"), "hello\n");
      await fs.writeFile(path.join(tmp, "run.sh"), "#!/bin/sh\necho from-script\n", {
        mode: 0o755,
      });
      await node.copyIn(path.join(tmp, "dir"), "/opt/k8slab/dir");
      await node.copyIn(path.join(tmp, "run.sh"), "/opt/k8slab/run.sh");
      const r = await node.exec("cat /opt/k8slab/dir/sub/a.txt && /opt/k8slab/run.sh");
      expect(r.stdout).toBe("hello\nfrom-script\n");
    } finally {
      await fs.rm(tmp, { recursive: true, force: true });
    }
    expect((await node.exec("echo oops >&2; exit 3")).exitCode).toBe(3);
    const slow = await node.exec("sleep 30", { timeoutMs: 1_000 });
    expect(slow.exitCode).toBe(124);
  });

  it("leaves nothing behind after stop()", async () => {
    const c = cluster!;
    await c.stop();
    await c.stop(); // idempotent
    expect((await netnsNames()).filter((n) => n.includes(c.id))).toEqual([]);
    expect(await processesMentioning(c.id)).toEqual([]);
    const mountinfo = await fs.readFile("/proc/self/mountinfo", "utf8");
    expect(mountinfo).not.toContain(c.workDir);
    expect(mountinfo).not.toContain(c.id);
    expect(existsSync(c.workDir)).toBe(false);
    const cgroups = await execa("find", ["/sys/fs/cgroup", "-maxdepth", "3", "-name", `${c.id}*`]);
    expect(cgroups.stdout).toBe("");
    // machinectl needs systemd-machined; where it runs, no machine of ours may be listed.
    const machines = await execa("machinectl", ["list", "--no-legend"], { reject: false });
    if (machines.exitCode === 0) expect(machines.stdout).not.toContain(c.id);
    await expect(c.nodes[0]!.exec("true")).rejects.toThrow(/not running/);
  });
});
