/**
 * reset.sh on a real node: a Debian 12 systemd node (systemd-nspawn) gets the phases the
 * provisioning test runs (base, pki with a private registry's login, artifacts, etcd,
 * flannel-config, and flannel where the fixture flanneld exists), then reset.sh, and the node is
 * compared with itself before: its files (find / -xdev, without /proc /sys /dev /run /tmp
 * /var/log /var/cache and the journal), its links (ip -o link) and its iptables rules. Debian's
 * etcd 3.4 stands in for the etcd artifact, as in provision-nspawn.test.ts; the artifacts phase
 * finds flannel's archive already in its cache (put there as the host's server would), so no
 * network is needed.
 */
import { execa } from "execa";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Phase } from "../src/plan/plan.js";
import { stageRegistryCredentials } from "../src/registry/credentials.js";
import { renderLabDir, type RenderResult } from "../src/render/index.js";
import { k8sFixturesMissing, prepareK8sFixtures } from "./helpers/k8s-fixtures.js";
import { editedLab, OFFLINE } from "./helpers/labs.js";
import type { ExecResult, NspawnCluster, NspawnNode } from "./helpers/nspawn-cluster.js";
import { nspawnAvailable, startNspawnCluster } from "./helpers/nspawn-cluster.js";
import { waitFor } from "./helpers/netns.js";
import { useTmpDirs } from "./helpers/tmp.js";

const availability = await nspawnAvailable();
if (!availability.ok) console.warn(`reset on nspawn skipped: ${availability.reason ?? "?"}`);
const fixturesMissing = k8sFixturesMissing();
const SCALE = Number(process.env.K8SLAB_DEADLINE_SCALE ?? "1") || 1;
const PHASE_TIMEOUT_MS = 90_000 * SCALE;
const PASSWORD = "nspawn-Registry-pa55!";
const NODE = { name: "k8s", ip: "192.168.56.160" };

/** The node's state that reset must restore, each part a sorted list of lines. */
const FILES = String.raw`find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp -o -path /var/log -o -path /var/cache -o -path /vagrant \) -prune -o -printf '%p %y\n' | sort`;
const LINKS = String.raw`ip -o link | sed -E 's/^[0-9]+: ([^:@]+)[:@].*/\1/' | sort`;

const tmp = useTmpDirs();
let cluster: NspawnCluster | undefined;
let rendered: RenderResult | undefined;
const timings: string[] = [];
const runs = new Map<string, ExecResult>();
let before: { files: string; links: string; iptables: string } | undefined;
let after: typeof before;

function node(): NspawnNode {
  const n = cluster?.nodes[0];
  if (!n) throw new Error("the node is not running");
  return n;
}

async function exec(what: string, cmd: string, timeoutMs = 30_000): Promise<ExecResult> {
  const t0 = Date.now();
  const r = await node().exec(cmd, { timeoutMs });
  timings.push(`${what} ${Date.now() - t0} ms`);
  runs.set(what, r);
  return r;
}

function ok(what: string, r: ExecResult): void {
  expect(r.exitCode, `${what}: exit ${r.exitCode}\n${r.stdout}\n${r.stderr}`).toBe(0);
}

/** iptables rules of the node's network namespace, read with the host's iptables-save. */
async function iptablesOfNode(): Promise<string> {
  const ns = `${cluster!.id}-n0`;
  const r = await execa("ip", ["netns", "exec", ns, "iptables-save"], { reject: false });
  if (r.exitCode !== 0) return `iptables-save: ${r.exitCode}`;
  return r.stdout
    .split("\n")
    .filter((l) => !l.startsWith("#"))
    .map((l) => l.replace(/\[\d+:\d+\]$/, ""))
    .join("\n");
}

async function capture(): Promise<NonNullable<typeof before>> {
  const files = await exec("list files", FILES, 60_000);
  ok("list files", files);
  const links = await exec("list links", LINKS);
  ok("list links", links);
  return { files: files.stdout, links: links.stdout, iptables: await iptablesOfNode() };
}

function difference(a: string, b: string): { added: string[]; removed: string[] } {
  const was = new Set(a.split("\n"));
  const is = new Set(b.split("\n"));
  return {
    added: [...is].filter((l) => !was.has(l)),
    removed: [...was].filter((l) => !is.has(l)),
  };
}

const runPhase = (phase: Phase) =>
  exec(phase, `bash /vagrant/provision/${NODE.name}/${phase}.sh`, PHASE_TIMEOUT_MS);

describe.skipIf(!availability.ok)("reset.sh on a real systemd node", () => {
  beforeAll(async () => {
    const root = await tmp();
    const fixtures = fixturesMissing ? undefined : await prepareK8sFixtures();
    const flannel = fixtures?.archives.flannel;
    const text = editedLab("single-node", [
      // No images from a registry: the nodes build pause and hyperkube, and there are no addons.
      ...OFFLINE,
      [
        ["artifacts"],
        flannel
          ? {
              flannel: {
                // Never fetched: the archive is in the node's cache already (see below).
                url: "http://127.0.0.1:9/flannel-v0.10.0-linux-amd64.tar.gz",
                sha256: flannel.sha256,
                install: flannel.install,
              },
            }
          : {},
      ],
      [
        ["registry"],
        { server: "registry.example.invalid:5000", username: "bee", passwordEnv: "REG_PW" },
      ],
    ]);
    const labFile = join(root, "single-node.yaml");
    await writeFile(labFile, text);
    rendered = await renderLabDir({ lab: labFile, cwd: root, dir: "lab" });
    await stageRegistryCredentials(rendered.dir, rendered.lab, {
      env: { REG_PW: PASSWORD },
      labFileDir: root,
    });
    cluster = await startNspawnCluster([{ ...NODE, prefix: 24 }], {
      bootTimeoutMs: 90_000 * SCALE,
    });
    before = await capture();
    await node().copyIn(
      join(rendered.dir, "provision", NODE.name),
      `/vagrant/provision/${NODE.name}`,
    );
    await node().copyIn(
      join(rendered.dir, "pki", "nodes", NODE.name),
      rendered.plan.paths.pkiUpload,
    );
    if (fixtures && flannel) {
      // What the host's artifact server would have delivered: the verified archive in the cache.
      await node().copyIn(join(fixtures.dir, flannel.file), "/var/cache/k8slab/flannel");
      ok(
        "seed cache",
        await exec("seed cache", `echo ${flannel.sha256} >/var/cache/k8slab/flannel.sha256`),
      );
    }
    for (const phase of rendered.plan.master.phases) {
      if (["flannel", "docker", "kubelet", "control-plane", "kube-proxy", "addons"].includes(phase))
        break;
      await runPhase(phase);
      if (phase === "etcd") {
        await waitFor(
          "etcd answers",
          async () => {
            const r = await node().exec(
              `ETCDCTL_API=3 etcdctl --endpoints https://${NODE.ip}:2379 --cacert /etc/kubernetes/pki/etcd-ca.pem --cert /etc/kubernetes/pki/etcd-client-flannel.pem --key /etc/kubernetes/pki/etcd-client-flannel-key.pem endpoint health 2>&1`,
              { timeoutMs: 20_000 },
            );
            return r.exitCode === 0
              ? { done: true, value: undefined }
              : { done: false, detail: r.stdout };
          },
          { attempts: 60, intervalMs: 1000, timeoutMs: 60_000 * SCALE },
        );
      }
    }
    if (flannel) {
      await runPhase("flannel");
      await waitFor(
        "flannel.1 exists",
        async () => {
          const r = await node().exec("ip link show flannel.1 && cat /run/flannel/subnet.env");
          return r.exitCode === 0
            ? { done: true, value: undefined }
            : { done: false, detail: r.stderr };
        },
        { attempts: 60, intervalMs: 1000, timeoutMs: 60_000 * SCALE },
      ).catch(() => undefined); // reported by the test below, with flanneld's journal
    }
    runs.set(
      "docker config",
      await node().exec(
        "stat -c '%a %U' /root/.docker/config.json && cat /root/.docker/config.json",
      ),
    );
    runs.set(
      "reset",
      await exec("reset", `bash /vagrant/provision/${NODE.name}/reset.sh`, PHASE_TIMEOUT_MS),
    );
    runs.set(
      "reset again",
      await exec("reset again", `bash /vagrant/provision/${NODE.name}/reset.sh`, PHASE_TIMEOUT_MS),
    );
    // The copies of the lab's scripts are the test's, as Vagrant's /vagrant would be.
    await exec("remove scripts", "rm -rf /vagrant");
    after = await capture();
  }, 900_000 * SCALE);

  afterAll(async () => {
    if (cluster) await cluster.stop();
    if (timings.length > 0) console.error(`[reset-nspawn] timings: ${timings.join(", ")}`);
  }, 120_000);

  it("ran the phases, and the registry's login reached Docker's config on the node (0600)", () => {
    const phases = rendered!.plan.master.phases.filter((p) =>
      [
        "base",
        "pki",
        "artifacts",
        "etcd",
        "flannel-config",
        ...(fixturesMissing ? [] : ["flannel"]),
      ].includes(p),
    );
    for (const phase of phases) ok(phase, runs.get(phase)!);
    const config = runs.get("docker config")!;
    ok("docker config", config);
    const [mode, ...json] = config.stdout.split("\n");
    expect(mode).toBe("600 root");
    const auths = (JSON.parse(json.join("\n")) as { auths: Record<string, { auth: string }> })
      .auths;
    expect(Buffer.from(auths["registry.example.invalid:5000"]!.auth, "base64").toString()).toBe(
      `bee:${PASSWORD}`,
    );
    // The scripts themselves never held it.
    for (const r of runs.values()) expect(r.stdout + r.stderr).not.toContain(PASSWORD);
  });

  it.skipIf(fixturesMissing !== undefined)("flannel made its VTEP before the reset", () => {
    expect(runs.get("flannel")!.stdout).toContain("flanneld.service");
    expect(after!.links).not.toContain("flannel.1");
  });

  it("reset.sh succeeds, twice, and says what it removed", () => {
    const reset = runs.get("reset")!;
    ok("reset", reset);
    expect(reset.stdout).toContain("removed /etc/systemd/system/etcd.service");
    expect(reset.stdout).toContain("removed /etc/kubernetes/pki");
    expect(reset.stdout).toContain("removed /root/.docker/config.json");
    expect(reset.stdout).toContain("removed the k8slab block from /etc/hosts");
    const again = runs.get("reset again")!;
    ok("reset again", again);
    expect(again.stdout).toContain("nothing of lab single-node was left on k8s");
  });

  it("leaves the node's files, links and iptables rules as they were", async () => {
    expect(difference(before!.files, after!.files)).toEqual({ added: [], removed: [] });
    expect(after!.links).toBe(before!.links);
    expect(after!.iptables).toBe(before!.iptables);
    const hosts = await node().exec("grep -c k8slab /etc/hosts || true");
    expect(hosts.stdout.trim()).toBe("0");
  });
});
