import { constants } from "node:fs";
import { access, readFile, stat, statfs } from "node:fs/promises";
import { cpus, freemem, networkInterfaces, totalmem, userInfo } from "node:os";
import { delimiter, join } from "node:path";
import type { ProviderName, VagrantProviderName } from "../lab/providers.js";
import type { Lab } from "../lab/schema.js";
import { boxFor } from "../plan/plan.js";
import { parseMachineReadable } from "../vagrant/machine-readable.js";
import { VBOX_DEFAULT_RANGE } from "../lab/rules.js";
import { runCommand, type Runner } from "../util/exec.js";
import { contains, formatCidr, nthAddress, overlaps, parseCidr, type Cidr } from "../util/ipv4.js";

export type Verdict = "ok" | "warn" | "fail";

export interface DoctorItem {
  name: string;
  verdict: Verdict;
  detail: string;
  hint?: string;
}

export interface DoctorOptions {
  lab?: Lab;
  provider: ProviderName;
  /**
   * Where the lab directory goes (its filesystem is checked for space); for an SSH lab, the lab
   * directory, whose known_hosts (if any) the node checks trust.
   */
  dir: string;
  runner?: Runner;
  /** Files read for the host's routes and VirtualBox's network rules (tests point elsewhere). */
  routesFile?: string;
  vboxNetworksFile?: string;
  kvmDevice?: string;
  /** Where libvirtd and virsh are looked for (default: PATH and the sbin folders). */
  programDirs?: string[];
  /** The user's id (default: this process's); root is told nothing about groups. */
  uid?: number;
  /** libvirtd's socket for qemu:///system. */
  libvirtSocket?: string;
}

const GB = 1024 ** 3;

async function version(runner: Runner, file: string, args: string[]): Promise<string | undefined> {
  try {
    const { stdout } = await runner(file, args, { timeoutMs: 30_000 });
    return stdout.trim().split("\n")[0];
  } catch {
    return undefined;
  }
}

/** Each check gives a verdict; `create` stops on any "fail". */
export async function runDoctor(options: DoctorOptions): Promise<DoctorItem[]> {
  const runner = options.runner ?? runCommand;
  if (options.provider === "ssh") return sshDoctor(options, runner);
  const items: DoctorItem[] = [];
  const vagrant = await version(runner, "vagrant", ["--version"]);
  items.push(
    vagrant
      ? { name: "vagrant", verdict: "ok", detail: vagrant }
      : {
          name: "vagrant",
          verdict: "fail",
          detail: "vagrant not found",
          hint: "install Vagrant 2.2 or later",
        },
  );
  items.push(...(await providerChecks(options, runner)));
  if (options.lab && vagrant) items.push(await boxCheck(options.lab, options.provider, runner));
  if (options.lab) {
    items.push(...resourceChecks(options.lab));
    items.push(await diskCheck(options.lab, options.dir));
    items.push(await routeCheck(options.lab, options.routesFile ?? "/proc/net/route"));
  }
  return items;
}

/**
 * An SSH lab boots nothing on this host: the checks are the ssh client here, then each node's
 * login, sudo, architecture, cgroups and kernel (src/doctor/ssh-nodes.ts).
 */
async function sshDoctor(options: DoctorOptions, runner: Runner): Promise<DoctorItem[]> {
  const client = await runner("ssh", ["-V"], { timeoutMs: 10_000 }).then(
    (r) => `${r.stdout}${r.stderr}`.trim().split("\n")[0] ?? "",
    () => undefined,
  );
  if (client === undefined) {
    return [
      {
        name: "ssh client",
        verdict: "fail",
        detail: "ssh not found",
        hint: "install OpenSSH's client (Debian/Ubuntu: apt-get install openssh-client)",
      },
    ];
  }
  const items: DoctorItem[] = [{ name: "ssh client", verdict: "ok", detail: client }];
  if (!options.lab || options.lab.provider.name !== "ssh" || !options.lab.ssh) {
    items.push({
      name: "ssh lab",
      verdict: "fail",
      detail: "the ssh provider needs a lab whose provider.name is ssh, with its ssh: settings",
      hint: "give the lab file: k8slab doctor <lab file>",
    });
    return items;
  }
  const { sshNodeChecks } = await import("./ssh-nodes.js");
  items.push(...(await sshNodeChecks(options.lab, { dir: options.dir, runner })));
  return items;
}

async function providerChecks(options: DoctorOptions, runner: Runner): Promise<DoctorItem[]> {
  if (options.provider === "ssh") return [];
  if (options.provider === "virtualbox") {
    const vbox = await version(runner, "VBoxManage", ["--version"]);
    const items: DoctorItem[] = [
      vbox
        ? { name: "virtualbox", verdict: "ok", detail: `VirtualBox ${vbox}` }
        : {
            name: "virtualbox",
            verdict: "fail",
            detail: "VBoxManage not found",
            hint: "install VirtualBox, or use libvirt: --provider libvirt",
          },
    ];
    if (options.lab && vbox)
      items.push(await vboxRangeCheck(options.lab, vbox, options.vboxNetworksFile));
    return items;
  }
  const plugins = await runner("vagrant", ["plugin", "list"], { timeoutMs: 60_000 }).then(
    (r) => r.stdout,
    () => "",
  );
  const driver = options.lab?.provider.libvirt.driver ?? "auto";
  const kvm = await access(options.kvmDevice ?? "/dev/kvm", constants.R_OK | constants.W_OK).then(
    () => true,
    () => false,
  );
  return [
    driver === "qemu" || (driver === "auto" && !kvm)
      ? {
          name: "virtualisation",
          verdict: driver === "qemu" ? "ok" : "warn",
          detail: "the VMs run under QEMU software emulation (several times slower than KVM)",
          ...(driver === "auto"
            ? { hint: "no usable /dev/kvm; enable hardware virtualisation for speed" }
            : {}),
        }
      : kvm
        ? {
            name: "virtualisation",
            verdict: "ok",
            detail: "KVM (/dev/kvm is usable)",
            hint: "if the VMs hang while booting, this KVM cannot run them: set provider.libvirt.driver: qemu",
          }
        : {
            name: "virtualisation",
            verdict: "fail",
            detail: "the lab asks for KVM but /dev/kvm is not usable",
            hint: "set provider.libvirt.driver: qemu (software emulation) or auto",
          },

    /vagrant-libvirt/.test(plugins)
      ? {
          name: "vagrant-libvirt",
          verdict: "ok",
          detail: plugins.match(/vagrant-libvirt[^\n]*/)![0],
        }
      : {
          name: "vagrant-libvirt",
          verdict: "fail",
          detail: "the vagrant-libvirt plugin is not installed",
          hint: "install it: apt-get install vagrant-libvirt (Debian/Ubuntu) or vagrant plugin install vagrant-libvirt",
        },
    await libvirtdCheck(options, runner),
  ];
}

const isExecutable = (path: string): Promise<boolean> =>
  access(path, constants.X_OK).then(
    () => true,
    () => false,
  );

/** The first of these programs found in these folders. */
async function findProgram(names: string[], dirs: string[]): Promise<string | undefined> {
  for (const dir of dirs) {
    for (const name of names) if (await isExecutable(join(dir, name))) return name;
  }
  return undefined;
}

/** The groups that may use qemu:///system without root (`libvirtd` on older Ubuntu). */
const LIBVIRT_GROUPS = ["libvirt", "libvirtd"];

async function groupsOf(runner: Runner, user?: string): Promise<string[] | undefined> {
  return runner("id", user ? ["-nG", user] : ["-nG"], { timeoutMs: 10_000 }).then(
    (r) => r.stdout.trim().split(/\s+/),
    () => undefined,
  );
}

/**
 * libvirtd answers at qemu:///system, or what stands in the way: libvirt is not installed, it is
 * installed and its daemon does not run, or the user is not (yet) in the libvirt group.
 */
async function libvirtdCheck(options: DoctorOptions, runner: Runner): Promise<DoctorItem> {
  const name = "libvirtd";
  let failure: string;
  try {
    const { stdout } = await runner(
      "virsh",
      ["--connect", "qemu:///system", "version", "--daemon"],
      { timeoutMs: 30_000 },
    );
    return { name, verdict: "ok", detail: stdout.trim().split("\n")[0] ?? "" };
  } catch (error) {
    failure = error instanceof Error ? error.message : String(error);
  }
  const dirs = options.programDirs ?? [
    ...(process.env.PATH ?? "").split(delimiter).filter(Boolean),
    "/usr/local/sbin",
    "/usr/sbin",
    "/sbin",
  ];
  const root = (options.uid ?? process.getuid?.()) === 0;
  const sudo = root ? "" : "sudo ";
  const daemon = await findProgram(["libvirtd", "virtqemud"], dirs);
  const virsh = await findProgram(["virsh"], dirs);
  // Only a user known not to be in the group is told to join it.
  let groupHint: string | undefined;
  if (!root) {
    const session = await groupsOf(runner);
    if (session && !session.some((g) => LIBVIRT_GROUPS.includes(g))) {
      // The group database may list the user already: then only this login predates it.
      const listed = await groupsOf(runner, userInfo().username);
      groupHint = listed?.some((g) => LIBVIRT_GROUPS.includes(g))
        ? "you are in the libvirt group but this login is not yet: log out and in again (or run: newgrp libvirt)"
        : "add yourself to the libvirt group: sudo adduser $USER libvirt, then log out and in again";
    }
  }
  const chain = (...hints: (string | undefined)[]) => hints.filter(Boolean).join("; then ");
  if (!daemon) {
    return {
      name,
      verdict: "fail",
      detail: "libvirt is not installed (no libvirtd)",
      hint: chain(
        `install it: ${sudo}apt-get install libvirt-daemon-system (Debian/Ubuntu)`,
        groupHint,
      ),
    };
  }
  if (!virsh) {
    return {
      name,
      verdict: "fail",
      detail: `${daemon} is installed but virsh is not, so k8slab cannot ask it whether it runs`,
      hint: `install it: ${sudo}apt-get install libvirt-clients (Debian/Ubuntu)`,
    };
  }
  const socketThere = await stat(options.libvirtSocket ?? "/var/run/libvirt/libvirt-sock").then(
    () => true,
    () => false,
  );
  const denied = /permission denied|authentication (unavailable|failed)|not authorized/i.test(
    failure,
  );
  if (!denied && (!socketThere || /no such file|connection refused/i.test(failure))) {
    return {
      name,
      verdict: "fail",
      detail: `${daemon} is installed but not running: nothing answers at qemu:///system`,
      hint: chain(`start it: ${sudo}systemctl start ${daemon}`, groupHint),
    };
  }
  // virsh says why on its last line ("error: Failed to connect socket to ...: Permission denied").
  const why = failure.trim().split("\n").at(-1) ?? "";
  if (groupHint) {
    return {
      name,
      verdict: "fail",
      detail: `${daemon} runs but does not let you use qemu:///system${denied ? ` (${why})` : ""}`,
      hint: groupHint,
    };
  }
  return {
    name,
    verdict: "fail",
    detail: `cannot reach ${daemon} at qemu:///system: ${why}`,
    hint: `see why: ${sudo}systemctl status ${daemon}, and virsh --connect qemu:///system version --daemon`,
  };
}

/**
 * The lab names a box for the provider, and Vagrant has it for that provider or can fetch it
 * (a catalogue name such as ubuntu/xenial64, or a URL). Boxes are often published for one
 * provider only: a box added for VirtualBox does not boot under libvirt.
 */
async function boxCheck(
  lab: Lab,
  provider: VagrantProviderName,
  runner: Runner,
): Promise<DoctorItem> {
  const box = boxFor(lab, provider);
  if (!box) {
    return {
      name: "box",
      verdict: "fail",
      detail: `the lab names no box for ${provider}`,
      hint: `add a box published for ${provider} to the lab file (box: ${provider}: name: ...), or use --provider ${provider === "libvirt" ? "virtualbox" : "libvirt"}`,
    };
  }
  const listed = await runner("vagrant", ["box", "list", "--machine-readable"], {
    timeoutMs: 60_000,
  }).then(
    (r) => parseMachineReadable(r.stdout),
    () => [],
  );
  // Lines come in groups: box-name, box-provider, box-version.
  const providers: string[] = [];
  for (let i = 0; i < listed.length; i++) {
    const line = listed[i]!;
    if (line.type === "box-name" && line.data[0] === box.name) {
      const next = listed.slice(i + 1).find((l) => l.type === "box-provider");
      if (next?.data[0]) providers.push(next.data[0]);
    }
  }
  if (providers.includes(provider)) {
    return { name: "box", verdict: "ok", detail: `${box.name} is added for ${provider}` };
  }
  const fetchable = box.url !== undefined || box.name.includes("/");
  if (providers.length > 0 && !fetchable) {
    return {
      name: "box",
      verdict: "fail",
      detail: `${box.name} is added only for ${providers.join(", ")}, not for ${provider}`,
      hint: `add it for ${provider}: vagrant box add --provider ${provider} ${box.name} <file or URL>`,
    };
  }
  return fetchable
    ? {
        name: "box",
        verdict: "ok",
        detail: `${box.name} for ${provider} is downloaded by vagrant up${providers.length ? ` (added for ${providers.join(", ")} only so far)` : ""}`,
      }
    : {
        name: "box",
        verdict: "fail",
        detail: `${box.name} is not added and has no url to fetch it from`,
        hint: `add it: vagrant box add --name ${box.name} <file or URL>, or give box.url in the lab file`,
      };
}

function atLeast(versionText: string, want: number[]): boolean {
  const got = versionText
    .split(/[^\d]+/)
    .filter(Boolean)
    .map(Number);
  for (let i = 0; i < want.length; i++) {
    const a = got[i] ?? 0;
    if (a !== want[i]) return a > want[i]!;
  }
  return true;
}

async function vboxRangeCheck(
  lab: Lab,
  vbox: string,
  file = "/etc/vbox/networks.conf",
): Promise<DoctorItem> {
  const net = parseCidr(lab.network.hostOnly);
  const range = parseCidr(VBOX_DEFAULT_RANGE);
  const name = "host-only range";
  if (!atLeast(vbox, [6, 1, 28]))
    return { name, verdict: "ok", detail: `VirtualBox ${vbox} allows any host-only range` };
  let allowed: Cidr[] = [range];
  try {
    const text = await readFile(file, "utf8");
    const listed = [...text.matchAll(/^\s*\*\s+(.+)$/gm)].flatMap((m) => m[1]!.trim().split(/\s+/));
    allowed = listed.filter((c) => /^\d+\.\d+\.\d+\.\d+\/\d+$/.test(c)).map(parseCidr);
  } catch {
    // No networks.conf: VirtualBox's default range applies.
  }
  const ok = allowed.some((a) => a.prefix <= net.prefix && overlaps(a, net));
  return ok
    ? { name, verdict: "ok", detail: `${lab.network.hostOnly} is allowed by VirtualBox` }
    : {
        name,
        verdict: "fail",
        detail: `VirtualBox ${vbox} refuses host-only networks outside ${allowed.map(formatCidr).join(", ")}`,
        hint: `add "* ${lab.network.hostOnly}" to ${file}, or move network.hostOnly inside ${VBOX_DEFAULT_RANGE}`,
      };
}

function resourceChecks(lab: Lab): DoctorItem[] {
  const needMb = lab.nodes.reduce((sum, n) => sum + n.memory, 0);
  const totalMb = Math.floor(totalmem() / 1024 ** 2);
  const freeMb = Math.floor(freemem() / 1024 ** 2);
  const cores = cpus().length;
  const maxCpus = Math.max(...lab.nodes.map((n) => n.cpus));
  return [
    needMb + 1024 > totalMb
      ? {
          name: "memory",
          verdict: "fail",
          detail: `the VMs need ${needMb} MB; the host has ${totalMb} MB`,
          hint: "lower nodes[].memory in the lab file",
        }
      : needMb > freeMb
        ? {
            name: "memory",
            verdict: "warn",
            detail: `the VMs need ${needMb} MB; ${freeMb} MB are free now`,
            hint: "close other programs",
          }
        : {
            name: "memory",
            verdict: "ok",
            detail: `the VMs need ${needMb} MB of ${totalMb} MB (${freeMb} MB free)`,
          },
    maxCpus > cores
      ? {
          name: "cpus",
          verdict: "warn",
          detail: `a VM wants ${maxCpus} CPUs; the host has ${cores}`,
        }
      : { name: "cpus", verdict: "ok", detail: `${cores} CPUs` },
  ];
}

async function diskCheck(lab: Lab, dir: string): Promise<DoctorItem> {
  const needGb = 3 * lab.nodes.length + 2;
  let path = dir;
  for (let i = 0; i < 50; i++) {
    try {
      const st = await statfs(path);
      const freeGb = (st.bavail * st.bsize) / GB;
      return freeGb < needGb
        ? {
            name: "disk",
            verdict: freeGb < needGb / 2 ? "fail" : "warn",
            detail: `${freeGb.toFixed(1)} GB free at ${path}; the lab needs about ${needGb} GB`,
            hint: "free some disk space or use --dir on another disk",
          }
        : { name: "disk", verdict: "ok", detail: `${freeGb.toFixed(1)} GB free` };
    } catch {
      const parent = path.replace(/\/[^/]*\/?$/, "") || "/";
      if (parent === path) break;
      path = parent;
    }
  }
  return { name: "disk", verdict: "warn", detail: `cannot measure free space for ${dir}` };
}

/**
 * A route to the lab's network is the lab's own when it goes through the host-only interface
 * VirtualBox or libvirt made for it: that interface holds the host's address on it (.1).
 */
function labOwnsInterface(iface: string, hostAddress: string): boolean {
  return (networkInterfaces()[iface] ?? []).some(
    (a) => a.family === "IPv4" && a.address === hostAddress,
  );
}

async function routeCheck(lab: Lab, file: string): Promise<DoctorItem> {
  const name = "host-only subnet";
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch {
    return { name, verdict: "ok", detail: "route table not readable here; not checked" };
  }
  const net = parseCidr(lab.network.hostOnly);
  const clash = text
    .split("\n")
    .slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 8)
    .map(([iface, dest, , , , , , mask]) => ({
      iface: iface!,
      cidr: { network: leHexToInt(dest!), prefix: bits(leHexToInt(mask!)) } as Cidr,
    }))
    .find(
      (r) =>
        r.cidr.prefix > 0 &&
        overlaps(r.cidr, net) &&
        !labOwnsInterface(r.iface, nthAddress(net, 1)),
    );
  if (!clash)
    return {
      name,
      verdict: "ok",
      detail: `${lab.network.hostOnly} is not routed elsewhere on this host`,
    };
  const hit = lab.nodes.find((n) => contains(clash.cidr, n.ip));
  return {
    name,
    verdict: "fail",
    detail: `${formatCidr(clash.cidr)} is already routed via ${clash.iface}${hit ? ` (it holds ${hit.name}'s ${hit.ip})` : ""}; the VMs would be unreachable`,
    hint: "pick another network.hostOnly (and node IPs) in the lab file, e.g. 192.168.57.0/24",
  };
}

/** /proc/net/route writes addresses as little-endian hex. */
function leHexToInt(hex: string): number {
  const n = parseInt(hex, 16);
  return (
    (((n & 0xff) << 24) |
      (((n >>> 8) & 0xff) << 16) |
      (((n >>> 16) & 0xff) << 8) |
      ((n >>> 24) & 0xff)) >>>
    0
  );
}

function bits(mask: number): number {
  let count = 0;
  for (let m = mask; m; m = (m << 1) >>> 0) count++;
  return count;
}
