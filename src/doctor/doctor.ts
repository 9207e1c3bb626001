import { constants } from "node:fs";
import { access, readFile, statfs } from "node:fs/promises";
import { cpus, freemem, networkInterfaces, totalmem } from "node:os";
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
  provider: "virtualbox" | "libvirt";
  /** Where the lab directory goes (its filesystem is checked for space). */
  dir: string;
  runner?: Runner;
  /** Files read for the host's routes and VirtualBox's network rules (tests point elsewhere). */
  routesFile?: string;
  vboxNetworksFile?: string;
  kvmDevice?: string;
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

async function providerChecks(options: DoctorOptions, runner: Runner): Promise<DoctorItem[]> {
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
  const virsh = await version(runner, "virsh", [
    "--connect",
    "qemu:///system",
    "version",
    "--daemon",
  ]);
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
    virsh
      ? { name: "libvirtd", verdict: "ok", detail: virsh }
      : {
          name: "libvirtd",
          verdict: "fail",
          detail: "cannot reach libvirtd at qemu:///system",
          hint: "install and start it: apt-get install libvirt-daemon-system, and add yourself to the libvirt group",
        },
  ];
}

/**
 * The lab names a box for the provider, and Vagrant has it for that provider or can fetch it
 * (a catalogue name such as ubuntu/xenial64, or a URL). Boxes are often published for one
 * provider only: a box added for VirtualBox does not boot under libvirt.
 */
async function boxCheck(
  lab: Lab,
  provider: DoctorOptions["provider"],
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
