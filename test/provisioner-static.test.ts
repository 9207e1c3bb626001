import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { readFile, readdir, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { execa } from "execa";
import { parse, parseAllDocuments } from "yaml";
import { renderLabDir } from "../src/render/index.js";
import { k8sFixturesMissing, prepareK8sFixtures } from "./helpers/k8s-fixtures.js";
import { useTmpDirs } from "./helpers/tmp.js";

/**
 * Phases whose programs cannot run here (flannel, Docker, hyperkube) are checked statically:
 * every unit file passes `systemd-analyze verify`, every manifest parses as YAML, and every flag
 * rendered for Kubernetes v1.9.3 is one that version accepts.
 */
const tmp = useTmpDirs();
const fixturesMissing = k8sFixturesMissing();

interface FlagData {
  _source: Record<string, string>;
  [component: string]: string[] | Record<string, string>;
}
const FLAGS = JSON.parse(
  readFileSync(join(import.meta.dirname, "data", "k8s-v1.9.3-flags.json"), "utf8"),
) as FlagData;
const accepted = (component: string) => new Set(FLAGS[component] as string[]);

/**
 * Files a script writes with `put_file PATH MODE <<TAG` (or a static pod manifest with
 * `static_pod NAME <<TAG`): [target path, body].
 */
function writtenFiles(script: string, tag: string): [string, string][] {
  const re = new RegExp(
    `(?:put_file (\\S+) \\d+|static_pod (\\S+)) <<'?${tag}'?\\n([\\s\\S]*?)\\n${tag}\\n`,
    "g",
  );
  return [...script.matchAll(re)].map((m) => [
    m[1] ? m[1].replace(/^"|"$/g, "") : `${m[2]}.yaml`,
    m[3]!,
  ]);
}

function flagNames(text: string): string[] {
  return [...text.matchAll(/(?:^|\s|")--([a-z0-9][a-z0-9-]*)(?==|\s|"|$)/gm)].map((m) => m[1]!);
}

async function renderBuiltin(name: string) {
  const cwd = await tmp();
  return renderLabDir({ lab: name, cwd });
}
const renderThreeNode = () => renderBuiltin("three-node");

/** The flags rendered for each component of three-node (unit files and static pods). */
async function renderedFlags(): Promise<Map<string, string[]>> {
  const { dir, plan } = await renderThreeNode();
  const seen = new Map<string, string[]>();
  const add = (component: string, flags: string[]) =>
    seen.set(component, [...(seen.get(component) ?? []), ...flags]);
  const unitComponent: Record<string, string> = {
    etcd: "etcd",
    flannel: "flanneld",
    kubelet: "kubelet",
    "kube-proxy": "kube-proxy",
  };
  for (const node of plan.nodes) {
    for (const phase of node.phases) {
      const script = await readFile(join(dir, "provision", node.name, `${phase}.sh`), "utf8");
      const component = unitComponent[phase];
      if (component) {
        for (const [, body] of writtenFiles(script, "UNIT")) add(component, flagNames(body));
      }
      if (phase === "control-plane") {
        for (const [target, body] of writtenFiles(script, "YAML")) {
          add(basename(target, ".yaml").replace(/"$/, ""), flagNames(body));
        }
      }
    }
  }
  return seen;
}

describe("static checks of the rendered provisioners", () => {
  it.each([
    ["three-node", 3 * 5],
    ["single-node", 5],
  ])("every systemd unit of %s passes systemd-analyze verify", async (name, units) => {
    const { dir, plan } = await renderBuiltin(name);
    let count = 0;
    for (const node of plan.nodes) {
      const unitsDir = await tmp();
      for (const phase of node.phases) {
        const script = await readFile(join(dir, "provision", node.name, `${phase}.sh`), "utf8");
        for (const [target, body] of writtenFiles(script, "UNIT")) {
          // A drop-in (docker.service.d/x.conf) is checked as the unit it completes.
          const name = basename(target.replace(/\.d\/[^/]+$/, ""));
          // The scripts expand ${x_bin} to the installed program; any executable stands in here.
          const unit = body
            .replace(/\$\{[a-z_]+_bin\}/g, "/bin/true")
            .replace(/\$\{[a-z_]+_dir\}/g, "/usr/bin")
            .replace(/\\\\\n/g, "\\\n")
            .replace(/\\\$/g, "$");
          await writeFile(join(unitsDir, name), unit);
          count++;
        }
      }
      const units = (await readdir(unitsDir)).map((u) => join(unitsDir, u));
      const verify = await execa("systemd-analyze", ["verify", "--man=no", ...units], {
        reject: false,
        all: true,
      });
      expect(verify.all, node.name).toBe("");
      expect(verify.exitCode, node.name).toBe(0);
    }
    expect(count).toBe(units);
  });

  it("every static pod manifest parses as a YAML Pod running the lab's hyperkube image", async () => {
    const { dir, lab } = await renderThreeNode();
    const script = await readFile(join(dir, "provision", "master", "control-plane.sh"), "utf8");
    const manifests = writtenFiles(script, "YAML");
    expect(manifests.map(([t]) => basename(t))).toEqual([
      "kube-apiserver.yaml",
      "kube-controller-manager.yaml",
      "kube-scheduler.yaml",
    ]);
    for (const [target, body] of manifests) {
      const docs = parseAllDocuments(body);
      expect(docs).toHaveLength(1);
      expect(docs[0]!.errors, target).toEqual([]);
      const pod = parse(body) as {
        kind: string;
        spec: { hostNetwork: boolean; containers: { image: string; command: string[] }[] };
      };
      expect(pod.kind).toBe("Pod");
      expect(pod.spec.hostNetwork).toBe(true);
      expect(pod.spec.containers[0]!.image).toBe(lab.images.hyperkube);
      expect(pod.spec.containers[0]!.command[0]).toBe("/hyperkube");
    }
  });

  it("every flag rendered is one that its component's version accepts", async () => {
    const seen = await renderedFlags();
    expect([...seen.keys()].sort()).toEqual([
      "etcd",
      "flanneld",
      "kube-apiserver",
      "kube-controller-manager",
      "kube-proxy",
      "kube-scheduler",
      "kubelet",
    ]);
    for (const [component, flags] of seen) {
      expect(flags.length, component).toBeGreaterThan(2);
      const unknown = flags.filter((f) => !accepted(component).has(f));
      expect(unknown, `${component} (list from ${FLAGS._source[component]})`).toEqual([]);
    }
  });

  it.skipIf(fixturesMissing !== undefined)(
    `every Kubernetes and flannel flag rendered is one the real v1.9.3 and v0.10.0 programs accept${fixturesMissing ? ` (skipped: ${fixturesMissing})` : ""}`,
    async () => {
      const fixtures = await prepareK8sFixtures();
      const seen = await renderedFlags();
      const programs: Record<string, [string, ...string[]]> = {
        "kube-apiserver": [fixtures.hyperkube, "apiserver"],
        "kube-controller-manager": [fixtures.hyperkube, "controller-manager"],
        "kube-scheduler": [fixtures.hyperkube, "scheduler"],
        kubelet: [fixtures.hyperkube, "kubelet"],
        "kube-proxy": [fixtures.hyperkube, "proxy"],
        flanneld: [fixtures.flanneld],
      };
      for (const [component, [file, ...args]] of Object.entries(programs)) {
        const help = await execa(file, [...args, "--help"], { reject: false, all: true });
        // cobra lists --flags; flanneld (Go's flag package) lists -flags.
        const known = new Set(
          [...(help.all ?? "").matchAll(/^\s+--?([a-z0-9][a-z0-9-]*)/gm)].map((m) => m[1]!),
        );
        expect(known.size, `${component} --help: ${help.all?.slice(0, 300)}`).toBeGreaterThan(15);
        const unknown = (seen.get(component) ?? []).filter((f) => !known.has(f));
        expect(unknown, `${component}: flags its v1.9.3 --help does not list`).toEqual([]);
      }
    },
  );

  it("keeps the flags seed 004 calls undocumented, consistent with each other", async () => {
    const { dir } = await renderThreeNode();
    const script = await readFile(join(dir, "provision", "master", "control-plane.sh"), "utf8");
    const [apiserver, controller] = writtenFiles(script, "YAML").map(([, b]) => b);
    const flag = (text: string, name: string) => new RegExp(`--${name}=([^"\\s]+)`).exec(text)?.[1];
    const saPublic = flag(apiserver!, "service-account-key-file");
    const saPrivate = flag(controller!, "service-account-private-key-file");
    expect(saPublic).toMatch(/service-account\.pem$/);
    expect(saPrivate).toBe(saPublic!.replace(/\.pem$/, "-key.pem"));
    expect(flag(apiserver!, "storage-backend")).toBe("etcd3");
    expect(flag(apiserver!, "admission-control")).toContain("ServiceAccount");
    expect(apiserver).not.toContain("--enable-admission-plugins");
    const kubelet = await readFile(join(dir, "provision", "minion1", "kubelet.sh"), "utf8");
    expect(kubelet).toContain("--fail-swap-on=false");
    expect(kubelet).toContain("--node-ip=192.168.56.166");
    const flannel = await readFile(join(dir, "provision", "minion1", "flannel.sh"), "utf8");
    // The private NIC, by its address: boxes name it eth1 or enp0s8; never Vagrant's NAT eth0.
    expect(flannel).toContain("--iface=192.168.56.166");
  });

  it("the addon manifests parse as YAML and carry the lab's DNS address, domain and images", async () => {
    const { dir, lab } = await renderThreeNode();
    const script = await readFile(join(dir, "provision", "master", "addons.sh"), "utf8");
    const manifests = new Map(writtenFiles(script, "YAML").map(([t, body]) => [basename(t), body]));
    expect([...manifests.keys()]).toEqual(["kube-dns.yaml", "dashboard.yaml"]);
    for (const [name, body] of manifests) {
      const docs = parseAllDocuments(body);
      expect(
        docs.every((d) => d.errors.length === 0),
        name,
      ).toBe(true);
      expect(docs.map((d) => (d.toJS() as { kind: string }).kind)).toContain("Deployment");
    }
    const dns = parseAllDocuments(manifests.get("kube-dns.yaml")!).map(
      (d) => d.toJS() as { kind: string; spec: Record<string, unknown> },
    );
    expect(dns.find((d) => d.kind === "Service")!.spec.clusterIP).toBe(lab.cluster.dnsIp);
    const body = manifests.get("kube-dns.yaml")!;
    expect(body).toContain(`--domain=${lab.cluster.domain}.`);
    expect(body).toContain(`image: ${lab.images.kubeDns}`);
    expect(manifests.get("dashboard.yaml")).toContain(`image: ${lab.images.dashboard}`);
  });

  it("kube-proxy's iptables-restore wrapper turns 1.9's -w5 into -w and passes the rest as it is", async () => {
    const { dir } = await renderThreeNode();
    const script = await readFile(join(dir, "provision", "minion1", "kube-proxy.sh"), "utf8");
    const [[path, body]] = writtenFiles(script, "WRAPPER") as [[string, string]];
    expect(path).toBe("/opt/k8slab/compat/iptables-restore");
    expect(script).toContain("Environment=PATH=/opt/k8slab/compat:");
    // The wrapper as the phase writes it (its heredoc expanded), in front of a stand-in for the
    // real iptables-restore that prints the arguments it gets.
    const work = await tmp();
    const real = join(work, "real");
    await writeFile(real, '#!/bin/sh\nprintf "[%s]" "$@"\n', { mode: 0o755 });
    const wrapper = join(work, "iptables-restore");
    const expanded = await execa("bash", [
      "-c",
      `restore_bin=${real}\ncat <<WRAPPER\n${body}\nWRAPPER`,
    ]);
    await writeFile(wrapper, expanded.stdout, { mode: 0o755 });
    const run = await execa(wrapper, [
      "--noflush",
      "-w5",
      "--counters",
      "a b",
      "--wait=2",
      "-W",
      "100000",
    ]);
    expect(run.stdout).toBe("[--noflush][-w][--counters][a b][-w][-W][100000]");
  });

  it.each(["three-node", "single-node"])(
    "no rendered script of %s downloads from the internet: only from the host's artifact server",
    async (name) => {
      const { dir, files } = await renderBuiltin(name);
      for (const f of files.filter((p) => p.endsWith(".sh"))) {
        const script = await readFile(join(dir, f), "utf8");
        const code = script
          .split("\n")
          .filter((l) => !/^\s*#/.test(l) && !/^Documentation=/.test(l))
          .join("\n");
        expect(code, f).not.toMatch(/\b(wget|apt-get|apt|yum|dnf|pip|docker pull|git clone)\b/);
        for (const call of code.match(/\bcurl\b[^\n]*/g) ?? []) {
          // The host's name for the file: the artifact's, or its architecture's (flannel-arm).
          expect(call, f).toMatch(/"\$base_url\/\$served(\.sha256)?"/);
        }
        for (const url of code.match(/https?:\/\/[^\s"'\\]+/g) ?? []) {
          // Only the lab's own addresses: etcd, the API server (local insecure port).
          expect(url, f).toMatch(/^https?:\/\/(192\.168\.56\.\d+|127\.0\.0\.1)[:/]/);
        }
      }
    },
  );
});
