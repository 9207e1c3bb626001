import { copyFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Lab, LabNode } from "../lab/schema.js";
import { SshError, SshMachines, asRoot, sh, sshLogin } from "../ssh/ssh-machines.js";
import type { Runner } from "../util/exec.js";
import type { DoctorItem } from "./doctor.js";

/**
 * The cgroup v1 controllers the kubelet 1.9 and Docker need: the kubelet refuses to start without
 * cpu, cpuacct, cpuset and memory mounted; Docker's runc uses devices and freezer.
 */
export const CGROUP_CONTROLLERS = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer"];

/** What `uname -m` says, as the architectures artifacts are published for. */
const ARCH: Record<string, string> = {
  x86_64: "amd64",
  aarch64: "arm64",
  arm64: "arm64",
  armv7l: "arm",
  armv6l: "arm",
};

/**
 * What the doctor reads on a node, as the login user (nothing needs root, nothing is written):
 * the architecture, the cgroup layout and the kernel modules the cluster needs.
 */
const FACTS = [
  "PATH=$PATH:/usr/sbin:/sbin",
  'echo "arch $(uname -m)"',
  'echo "cgroupfs $(stat -fc %T /sys/fs/cgroup 2>/dev/null)"',
  "awk 'NR > 1 { print \"controller\", $1, $4 }' /proc/cgroups",
  'awk \'$3 == "cgroup" { print "mounted", $4 }\' /proc/mounts',
  "for m in vxlan br_netfilter bridge overlay; do" +
    ' if [ -d /sys/module/$m ]; then echo "module $m loaded";' +
    ' elif grep -qs "/$m.ko" "/lib/modules/$(uname -r)/modules.builtin"; then echo "module $m built-in";' +
    ' elif modprobe -n -q $m 2>/dev/null; then echo "module $m loadable";' +
    ' else echo "module $m missing"; fi; done',
].join("\n");

export interface NodeFacts {
  arch: string;
  cgroupFs: string;
  /** Controllers the kernel has, and whether each is enabled. */
  controllers: Map<string, boolean>;
  /** Options of every cgroup (v1) mount: the controllers mounted. */
  mounted: Set<string>;
  modules: Map<string, string>;
}

export function parseFacts(text: string): NodeFacts {
  const facts: NodeFacts = {
    arch: "",
    cgroupFs: "",
    controllers: new Map(),
    mounted: new Set(),
    modules: new Map(),
  };
  for (const line of text.split("\n")) {
    const [what, a = "", b = ""] = line.trim().split(/\s+/);
    if (what === "arch") facts.arch = a;
    else if (what === "cgroupfs") facts.cgroupFs = a;
    else if (what === "controller") facts.controllers.set(a, b === "1");
    else if (what === "mounted") for (const o of a.split(",")) facts.mounted.add(o);
    else if (what === "module") facts.modules.set(a, b);
  }
  return facts;
}

/** The architecture a node's artifacts are for (amd64 unless the lab says otherwise). */
function wantedArch(node: LabNode): string {
  return (node as LabNode & { arch?: string }).arch ?? "amd64";
}

/** Verdicts on one node's facts: architecture, cgroups, kernel modules. */
export function factChecks(lab: Lab, node: LabNode, facts: NodeFacts): DoctorItem[] {
  const items: DoctorItem[] = [];
  const want = wantedArch(node);
  const got = ARCH[facts.arch] ?? facts.arch;
  items.push(
    got === want
      ? { name: `${node.name}: architecture`, verdict: "ok", detail: `${facts.arch} (${want})` }
      : {
          name: `${node.name}: architecture`,
          verdict: "fail",
          detail: `${facts.arch || "unknown"} (${got || "?"}), but the lab's artifacts for this node are ${want}`,
          hint: `set nodes[].arch for ${node.name} to ${got}, with artifacts built for it`,
        },
  );
  const off = CGROUP_CONTROLLERS.filter((c) => facts.controllers.get(c) !== true);
  const unmounted = CGROUP_CONTROLLERS.filter((c) => !facts.mounted.has(c));
  const cgroupHint =
    "the kubelet 1.9 knows only cgroup v1: boot the node with the kernel arguments systemd.unified_cgroup_hierarchy=0 systemd.legacy_systemd_cgroup_controller=1";
  items.push(
    facts.cgroupFs === "cgroup2fs"
      ? {
          name: `${node.name}: cgroups`,
          verdict: "fail",
          detail: "only cgroup v2 (/sys/fs/cgroup is cgroup2)",
          hint: cgroupHint,
        }
      : off.length > 0
        ? {
            name: `${node.name}: cgroups`,
            verdict: "fail",
            detail: `the kernel lacks or disables the cgroup controllers ${off.join(", ")} (/proc/cgroups)`,
            hint: `enable them (on a Raspberry Pi: cgroup_enable=cpuset cgroup_enable=memory cgroup_memory=1 in cmdline.txt)`,
          }
        : unmounted.length > 0
          ? {
              name: `${node.name}: cgroups`,
              verdict: "fail",
              detail: `no cgroup v1 hierarchy for ${unmounted.join(", ")} is mounted`,
              hint: cgroupHint,
            }
          : {
              name: `${node.name}: cgroups`,
              verdict: "ok",
              detail: `cgroup v1 with ${CGROUP_CONTROLLERS.join(", ")}`,
            },
  );
  const have = (m: string) =>
    ["loaded", "built-in", "loadable"].includes(facts.modules.get(m) ?? "");
  const missing = [
    ...(lab.cluster.flannelBackend === "vxlan" && !have("vxlan")
      ? ["vxlan (flannel's backend)"]
      : []),
    ...(!have("br_netfilter") && !have("bridge") ? ["br_netfilter or bridge"] : []),
    ...(!have("overlay") ? ["overlay (Docker's storage driver)"] : []),
  ];
  const seen = ["vxlan", "br_netfilter", "bridge", "overlay"]
    .map((m) => `${m} ${facts.modules.get(m) ?? "?"}`)
    .join(", ");
  items.push(
    missing.length === 0
      ? { name: `${node.name}: kernel`, verdict: "ok", detail: seen }
      : {
          name: `${node.name}: kernel`,
          verdict: "fail",
          detail: `missing kernel features: ${missing.join("; ")} (${seen})`,
          hint: "install the kernel's extra modules (Debian: linux-image-*; Raspberry Pi OS: the full kernel), or use a kernel built with them",
        },
  );
  return items;
}

/** The last line ssh or the command printed: why it failed. */
function why(error: unknown): string {
  if (error instanceof SshError) {
    return (
      error.outputTail.trim().split("\n").at(-1) ||
      (error.timedOut ? "timed out" : `exit ${error.exitCode}`)
    );
  }
  return error instanceof Error ? error.message : String(error);
}

/**
 * Per node of an SSH lab, before anything changes: it answers over SSH, the login user may run
 * commands as root (`sudo -n true`), its architecture, cgroups and kernel fit. Host keys are
 * checked against the lab's known_hosts when it has one, but a copy is used: the doctor writes
 * nothing, in the lab directory or on the nodes.
 */
export async function sshNodeChecks(
  lab: Lab,
  opts: { dir: string; runner?: Runner | undefined; env?: Record<string, string | undefined> },
): Promise<DoctorItem[]> {
  const scratch = await mkdtemp(join(tmpdir(), "k8slab-doctor-"));
  const knownHosts = join(scratch, "known_hosts");
  await copyFile(join(opts.dir, "known_hosts"), knownHosts).catch(() => undefined);
  const machines = new SshMachines({
    dir: opts.dir,
    lab,
    logDir: join(scratch, "logs"),
    knownHostsFile: knownHosts,
    ...(opts.env ? { env: opts.env } : {}),
    ...(opts.runner ? { runner: opts.runner } : {}),
  });
  try {
    const perNode = await Promise.all(
      lab.nodes.map(async (node): Promise<DoctorItem[]> => {
        const login = sshLogin(lab, node, opts.env);
        const where = `${login.user}@${login.host}:${login.port}`;
        const run = (command: string, label: string) =>
          machines.run(node.name, command, {
            label,
            timeoutMs: (login.connectTimeoutSeconds + 30) * 1000,
          });
        try {
          await run("true", "doctor-ssh");
        } catch (error) {
          return [
            {
              name: `${node.name}: ssh`,
              verdict: "fail",
              detail: `${where} does not answer over SSH: ${why(error)}`,
              hint: `check that ${node.name} is up and runs sshd, and that the key is authorised there: ssh -p ${login.port} ${login.user}@${login.host}${login.identityFile ? ` -i ${login.identityFile}` : ""} true`,
            },
          ];
        }
        const items: DoctorItem[] = [
          { name: `${node.name}: ssh`, verdict: "ok", detail: `${where} answers` },
        ];
        if (login.user === "root") {
          items.push({ name: `${node.name}: sudo`, verdict: "ok", detail: "logs in as root" });
        } else {
          try {
            await run(asRoot(login, "true"), "doctor-sudo");
            items.push({
              name: `${node.name}: sudo`,
              verdict: "ok",
              detail: `${login.user} runs commands as root (sudo -n)`,
            });
          } catch (error) {
            items.push({
              name: `${node.name}: sudo`,
              verdict: "fail",
              detail: `${login.user} cannot run commands as root without a password: ${why(error)}`,
              hint: `on ${node.name}: echo '${login.user} ALL=(ALL) NOPASSWD: ALL' | sudo tee /etc/sudoers.d/k8slab, or log in as root (ssh.user)`,
            });
          }
        }
        try {
          items.push(...factChecks(lab, node, parseFacts(await run(sh(FACTS), "doctor-facts"))));
        } catch (error) {
          items.push({
            name: `${node.name}: system`,
            verdict: "fail",
            detail: `cannot read the architecture, cgroups and kernel modules: ${why(error)}`,
          });
        }
        return items;
      }),
    );
    return perNode.flat();
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}
