import { createHash } from "node:crypto";
import { mkdir, rename, writeFile } from "node:fs/promises";
import { isAbsolute, join, relative, resolve } from "node:path";
import { Document } from "yaml";
import { K8slabError } from "../errors.js";
import type { Problem } from "../lab/problems.js";
import { shellQuote } from "../util/quote.js";
import { intToIp, parseCidr } from "../util/ipv4.js";
import { boardsOf, loadPiLab, type PiBoard, type PiLab } from "./pi-lab.js";

/**
 * Per-board cloud-init files for HypriotOS (v1.7+ reads /boot/user-data and /boot/meta-data with
 * cloud-init's NoCloud source), the `flash` command line for each board, and an Ansible inventory
 * in the seed's group layout. Every YAML file is produced by the yaml library from values the
 * lab schema has already checked; nothing is pasted into YAML text.
 */

/** Groups every board's user joins (HypriotOS' sample user-data with an SSH key). */
const USER_GROUPS = "users,docker,adm,dialout,audio,plugdev,netdev,video";

export interface BoardFiles {
  hostname: string;
  role: "master" | "node";
  ip?: string;
  userData: string;
  metaData: string;
  instanceId: string;
}

/** Netmask of a prefix length, e.g. 24 -> 255.255.255.0. */
function netmask(prefix: number): string {
  return intToIp(prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0);
}

/**
 * The static address as HypriotOS applies it. HypriotOS 1.9+ (stretch, the builder's images)
 * configures eth0 with dhcpcd, whose /etc/dhcpcd.conf takes `static` lines (the hypriot/flash
 * static.yml sample); 1.7/1.8 (jessie) use ifupdown and /etc/network/interfaces.d/eth0.
 */
function staticNetwork(lab: PiLab, b: PiBoard): { writeFiles: object[]; runcmd: string[] } {
  if (b.ip === undefined || lab.network.cidr === undefined) return { writeFiles: [], runcmd: [] };
  const prefix = parseCidr(lab.network.cidr).prefix;
  const { gateway, dns } = lab.network;
  if (lab.network.method === "ifupdown") {
    const content = [
      "# written by k8slab flash-config (cloud-init write_files)",
      "allow-hotplug eth0",
      "iface eth0 inet static",
      `    address ${b.ip}`,
      `    netmask ${netmask(prefix)}`,
      ...(gateway ? [`    gateway ${gateway}`] : []),
      ...(dns && dns.length > 0 ? [`    dns-nameservers ${dns.join(" ")}`] : []),
      "",
    ].join("\n");
    return {
      writeFiles: [{ path: "/etc/network/interfaces.d/eth0", permissions: "0644", content }],
      runcmd: ["ifdown eth0; ifup eth0"],
    };
  }
  const content = [
    "# written by k8slab flash-config (cloud-init write_files)",
    "clientid",
    "persistent",
    "option rapid_commit",
    "option domain_name_servers, domain_name, domain_search, host_name",
    "option classless_static_routes",
    "option ntp_servers",
    "require dhcp_server_identifier",
    "slaac private",
    "",
    "# static IP configuration:",
    "interface eth0",
    `static ip_address=${b.ip}/${prefix}`,
    ...(gateway ? [`static routers=${gateway}`] : []),
    ...(dns && dns.length > 0 ? [`static domain_name_servers=${dns.join(" ")}`] : []),
    "",
  ].join("\n");
  return {
    writeFiles: [{ path: "/etc/dhcpcd.conf", permissions: "0644", content }],
    runcmd: ["systemctl restart dhcpcd"],
  };
}

function yamlText(value: object): string {
  // lineWidth 0: never fold long values (SSH keys) over several lines.
  return new Document(value).toString({ lineWidth: 0, minContentWidth: 0 });
}

/** The user-data of one board: starts with #cloud-config, one `hostname:` line, a `users:` block. */
export function renderUserData(lab: PiLab, b: PiBoard): string {
  const net = staticNetwork(lab, b);
  const config: Record<string, unknown> = {
    hostname: b.hostname,
    manage_etc_hosts: true,
    apt_preserve_sources_list: true,
    package_upgrade: false,
    ssh_pwauth: false,
    users: [
      {
        name: lab.user.name,
        gecos: "k8slab",
        "primary-group": "users",
        groups: USER_GROUPS,
        shell: "/bin/bash",
        sudo: "ALL=(ALL) NOPASSWD:ALL",
        lock_passwd: true,
        ssh_authorized_keys: [...lab.user.sshAuthorizedKeys],
      },
    ],
    ...(net.writeFiles.length > 0 ? { write_files: net.writeFiles } : {}),
    // Pick up the hostname for avahi (<hostname>.local), then apply the static address.
    runcmd: ["systemctl restart avahi-daemon", ...net.runcmd],
  };
  const header = [
    "#cloud-config",
    `# ${b.role} ${b.hostname} of Pi cluster ${lab.name}, written by k8slab flash-config.`,
    "# Flash with --userdata and --metadata, without -n: flash -n rewrites every line naming the hostname key.",
    "",
  ].join("\n");
  return `${header}${yamlText(config)}`;
}

/** meta-data with an instance-id unique per board and per content: new files, new instance. */
export function renderMetaData(
  lab: PiLab,
  b: PiBoard,
  userData: string,
): { text: string; instanceId: string } {
  const digest = createHash("sha256").update(userData).digest("hex").slice(0, 12);
  const instanceId = `iid-k8slab-${lab.name}-${b.hostname}-${digest}`;
  return {
    text: yamlText({ "instance-id": instanceId, "local-hostname": b.hostname }),
    instanceId,
  };
}

export function renderBoards(lab: PiLab): BoardFiles[] {
  return boardsOf(lab).map((b) => {
    const userData = renderUserData(lab, b);
    const meta = renderMetaData(lab, b, userData);
    return {
      hostname: b.hostname,
      role: b.role,
      ...(b.ip ? { ip: b.ip } : {}),
      userData,
      metaData: meta.text,
      instanceId: meta.instanceId,
    };
  });
}

/**
 * The Ansible inventory in the seed's layout: [<name>-master], [<name>-nodes], [<name>:children],
 * [<name>:vars] with fqdn_master and network_address_master, and [master:children] /
 * [nodes:children]. Every value here matched a strict pattern (IPv4, DNS label, user name).
 */
export function renderInventory(lab: PiLab): string {
  const host = (b: PiBoard) => b.ip ?? `${b.hostname}.${lab.network.domain}`;
  const boards = boardsOf(lab);
  const master = boards[0]!;
  const nodes = boards.slice(1);
  const n = lab.name;
  return [
    `# Ansible inventory for Pi cluster ${n}, written by k8slab flash-config.`,
    `# ansible -i cluster -m ping all ; ansible-playbook -i cluster -l ${n} kubernetes.yml`,
    `[${n}-master]`,
    host(master),
    "",
    `[${n}-nodes]`,
    ...nodes.map(host),
    "",
    `[${n}:children]`,
    `${n}-master`,
    `${n}-nodes`,
    "",
    `[${n}:vars]`,
    `ansible_user=${lab.user.name}`,
    `fqdn_master="${master.hostname}.${lab.network.domain}"`,
    ...(master.ip ? [`network_address_master="${master.ip}"`] : []),
    "",
    "[master:children]",
    `${n}-master`,
    "",
    "[nodes:children]",
    `${n}-nodes`,
    "",
  ].join("\n");
}

/** flash copies its arguments through `eval` inside double quotes: these characters break it. */
const FLASH_UNSAFE = /["$`\\\n\r]/;

export function flashCommand(userData: string, metaData: string, image: string): string {
  return ["flash", "--userdata", userData, "--metadata", metaData, image].map(shellQuote).join(" ");
}

export interface FlashConfigOptions {
  lab: string;
  cwd: string;
  out: string;
  /** Image for the flash commands; default: the lab's `image`. */
  image?: string;
}

export interface FlashConfigResult {
  lab: PiLab;
  labFile: string;
  out: string;
  inventory: string;
  boards: (BoardFiles & { flash: string })[];
  warnings: Problem[];
}

async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.k8slab-${process.pid}.tmp`;
  await writeFile(tmp, text, { mode: 0o644 });
  await rename(tmp, path);
}

/** Write every board's user-data and meta-data and the inventory; return the flash commands. */
export async function writeFlashConfig(options: FlashConfigOptions): Promise<FlashConfigResult> {
  const { lab, file, warnings } = await loadPiLab(options.lab, { cwd: options.cwd });
  const out = resolve(options.cwd, options.out);
  const image = options.image ?? lab.image;
  const shown = (p: string) => {
    const r = relative(options.cwd, p);
    return r === "" || r.startsWith("..") || isAbsolute(r) ? p : r;
  };
  for (const [what, value] of [
    ["--out", shown(out)],
    ["the image", image],
  ] as const) {
    if (FLASH_UNSAFE.test(value)) {
      throw new K8slabError(
        `${what} ${JSON.stringify(value)} has a character flash cannot pass on ($ \` " \\)`,
        {
          exitCode: 2,
          hint: "flash evaluates its arguments inside double quotes; use a path of plain characters",
        },
      );
    }
  }
  await mkdir(out, { recursive: true });
  const boards: FlashConfigResult["boards"] = [];
  for (const b of renderBoards(lab)) {
    const dir = join(out, b.hostname);
    await mkdir(dir, { recursive: true });
    const userData = join(dir, "user-data");
    const metaData = join(dir, "meta-data");
    await writeAtomic(userData, b.userData);
    await writeAtomic(metaData, b.metaData);
    boards.push({
      hostname: b.hostname,
      role: b.role,
      ...(b.ip ? { ip: b.ip } : {}),
      userData,
      metaData,
      instanceId: b.instanceId,
      flash: flashCommand(shown(userData), shown(metaData), image),
    });
  }
  const inventory = join(out, "cluster");
  await writeAtomic(inventory, renderInventory(lab));
  return { lab, labFile: file, out, inventory, boards, warnings };
}
