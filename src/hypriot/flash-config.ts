import { createHash, pbkdf2Sync } from "node:crypto";
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, isAbsolute, join, relative, resolve } from "node:path";
import { Document } from "yaml";
import { z } from "zod";
import { K8slabError } from "../errors.js";
import { readJsonFile } from "../lab-dir/json-file.js";
import { withLabLock } from "../lab-dir/lock.js";
import type { Problem } from "../lab/problems.js";
import { contentEntries, notOursError, removeLeftovers, stageAndSwap } from "../render/lab-dir.js";
import { shellQuote } from "../util/quote.js";
import { intToIp, parseCidr } from "../util/ipv4.js";
import {
  boardJoinsWifi,
  boardsOf,
  loadPiLab,
  piLabImage,
  type PiBoard,
  type PiLab,
  type PiWifi,
} from "./pi-lab.js";
import { HYPHEN_NOTE, releaseImageUrl, releaseOfImage, type NetworkMethod } from "./releases.js";

/**
 * Per-board cloud-init files for HypriotOS (v1.7+ reads /boot/user-data and /boot/meta-data with
 * cloud-init's NoCloud source, v1.12.1+ also /boot/network-config), the `flash` command line for
 * each board, and an Ansible inventory in the seed's group layout for one or more clusters. Every
 * YAML file is produced by the yaml library from values the lab schema has already checked;
 * nothing is pasted into YAML text.
 */

/** Groups every board's user joins (HypriotOS' sample user-data with an SSH key). */
const USER_GROUPS = "users,docker,adm,dialout,audio,plugdev,netdev,video";
const WPA_CONF = "/etc/wpa_supplicant/wpa_supplicant.conf";

export interface BoardFiles {
  hostname: string;
  role: "master" | "node";
  ip?: string;
  userData: string;
  metaData: string;
  /** /boot/network-config, for images that configure eth0 from it (HypriotOS v1.12.1+). */
  networkConfig?: string;
  instanceId: string;
}

/** Netmask of a prefix length, e.g. 24 -> 255.255.255.0. */
function netmask(prefix: number): string {
  return intToIp(prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0);
}

interface NetworkParts {
  writeFiles: object[];
  runcmd: string[];
}

/**
 * A static eth0 address where the image's release looks for it: /etc/network/interfaces.d/eth0
 * (ifupdown, v1.7.x), /etc/dhcpcd.conf (dhcpcd, v1.8.0 to v1.12.0, like the hypriot/flash
 * static.yml sample) or /boot/network-config (network-config, v1.12.1+: see renderNetworkConfig).
 */
function staticEth0(lab: PiLab, b: PiBoard, method: NetworkMethod): NetworkParts {
  if (b.ip === undefined || lab.network.cidr === undefined || method === "network-config") {
    return { writeFiles: [], runcmd: [] };
  }
  const prefix = parseCidr(lab.network.cidr).prefix;
  const { gateway, dns } = lab.network;
  if (method === "ifupdown") {
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

/** The WPA pre-shared key for a passphrase (what wpa_passphrase prints): the card never holds the passphrase. */
export function wpaPsk(ssid: string, secret: string): string {
  if (/^[0-9a-fA-F]{64}$/.test(secret)) return secret.toLowerCase();
  return pbkdf2Sync(secret, ssid, 4096, 32, "sha1").toString("hex");
}

/**
 * wlan0 with DHCP. Under dhcpcd (v1.8.0 to v1.12.0) dhcpcd's wpa_supplicant hook manages wlan0
 * from wpa_supplicant.conf alone (an ifupdown stanza as well would give it a second address, the
 * problem PR #224 fixed for eth0); otherwise ifupdown brings it up with that file.
 */
function wifiParts(w: PiWifi, psk: string, method: NetworkMethod): NetworkParts {
  const conf = [
    "# written by k8slab flash-config (cloud-init write_files)",
    `country=${w.country}`,
    "ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev",
    "update_config=1",
    "",
    "network={",
    `    ssid="${w.ssid}"`,
    `    psk=${psk}`,
    "    key_mgmt=WPA-PSK",
    "}",
    "",
  ].join("\n");
  const files: object[] = [{ path: WPA_CONF, permissions: "0600", content: conf }];
  if (method === "dhcpcd") return { writeFiles: files, runcmd: ["wpa_cli -i wlan0 reconfigure"] };
  const stanza = [
    "# written by k8slab flash-config (cloud-init write_files)",
    "allow-hotplug wlan0",
    "iface wlan0 inet dhcp",
    `    wpa-conf ${WPA_CONF}`,
    "",
  ].join("\n");
  return {
    writeFiles: [
      ...files,
      { path: "/etc/network/interfaces.d/wlan0", permissions: "0644", content: stanza },
    ],
    runcmd: ["ifup wlan0"],
  };
}

function yamlText(value: object): string {
  // lineWidth 0: never fold long values (SSH keys) over several lines.
  return new Document(value).toString({ lineWidth: 0, minContentWidth: 0 });
}

/** Secrets a lab refers to, read on this machine (the Wi-Fi key as a PSK). */
export interface PiSecrets {
  wifiPsk?: string;
}

/** The user-data of one board: starts with #cloud-config, one `hostname:` line, a `users:` block. */
export function renderUserData(lab: PiLab, b: PiBoard, secrets: PiSecrets = {}): string {
  const { method } = piLabImage(lab);
  const wifi = lab.network.wifi;
  const parts = [
    staticEth0(lab, b, method),
    ...(wifi && secrets.wifiPsk && boardJoinsWifi(lab, b)
      ? [wifiParts(wifi, secrets.wifiPsk, method)]
      : []),
  ];
  const writeFiles = parts.flatMap((p) => p.writeFiles);
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
        // cloud-init's schema knows primary_group; HypriotOS' cloud-init 0.7.9 reads it too.
        primary_group: "users",
        groups: USER_GROUPS,
        shell: "/bin/bash",
        sudo: "ALL=(ALL) NOPASSWD:ALL",
        lock_passwd: true,
        ssh_authorized_keys: [...lab.user.sshAuthorizedKeys],
      },
    ],
    ...(writeFiles.length > 0 ? { write_files: writeFiles } : {}),
    // Pick up the hostname for avahi (<hostname>.local), then apply the network settings.
    runcmd: ["systemctl restart avahi-daemon", ...parts.flatMap((p) => p.runcmd)],
  };
  const header = [
    "#cloud-config",
    `# ${b.role} ${b.hostname} of Pi cluster ${lab.name}, written by k8slab flash-config.`,
    "# Flash with --userdata and --metadata, without -n: flash -n rewrites every line naming the hostname key.",
    "",
  ].join("\n");
  return `${header}${yamlText(config)}`;
}

/**
 * /boot/network-config (cloud-init network config version 1) for HypriotOS v1.12.1+, which masks
 * dhcpcd and lets cloud-init configure eth0: static with the lab's address, else DHCP.
 */
export function renderNetworkConfig(lab: PiLab, b: PiBoard): string {
  const { cidr, gateway, dns } = lab.network;
  const subnet =
    b.ip !== undefined && cidr !== undefined
      ? {
          type: "static",
          address: b.ip,
          netmask: netmask(parseCidr(cidr).prefix),
          ...(gateway ? { gateway } : {}),
          ...(dns && dns.length > 0 ? { dns_nameservers: [...dns] } : {}),
        }
      : { type: "dhcp" };
  const header = `# /boot/network-config of ${b.hostname}, written by k8slab flash-config (flash --file).\n`;
  return `${header}${yamlText({
    version: 1,
    config: [{ type: "physical", name: "eth0", subnets: [subnet] }],
  })}`;
}

/** meta-data with an instance-id unique per board and per content: new files, new instance. */
export function renderMetaData(
  lab: PiLab,
  b: PiBoard,
  content: string,
): { text: string; instanceId: string } {
  const digest = createHash("sha256").update(content).digest("hex").slice(0, 12);
  const instanceId = `iid-k8slab-${lab.name}-${b.hostname}-${digest}`;
  return {
    text: yamlText({ "instance-id": instanceId, "local-hostname": b.hostname }),
    instanceId,
  };
}

export function renderBoards(lab: PiLab, secrets: PiSecrets = {}): BoardFiles[] {
  const { method } = piLabImage(lab);
  return boardsOf(lab).map((b) => {
    const userData = renderUserData(lab, b, secrets);
    const networkConfig = method === "network-config" ? renderNetworkConfig(lab, b) : undefined;
    const meta = renderMetaData(lab, b, `${userData}${networkConfig ?? ""}`);
    return {
      hostname: b.hostname,
      role: b.role,
      ...(b.ip ? { ip: b.ip } : {}),
      userData,
      metaData: meta.text,
      ...(networkConfig ? { networkConfig } : {}),
      instanceId: meta.instanceId,
    };
  });
}

/** The note about the seed's group names that every inventory carries. */
/**
 * The Ansible inventory in the seed's layout, for one or more clusters: per cluster
 * [<name>-master], [<name>-nodes], [<name>:children], [<name>:vars] with fqdn_master and
 * network_address_master; then [master:children] and [nodes:children] over all clusters. Every
 * value here matched a strict pattern (IPv4, DNS label, user name).
 */
export function renderInventory(labs: readonly PiLab[]): string {
  const lines = [
    `# Ansible inventory for Pi cluster${labs.length === 1 ? "" : "s"} ${labs.map((l) => l.name).join(", ")}, written by k8slab flash-config.`,
    `# ansible -i cluster -m ping all ; ansible-playbook -i cluster -l ${labs[0]?.name ?? "CLUSTER"} kubernetes.yml`,
    `# Note: ${HYPHEN_NOTE}.`,
  ];
  for (const lab of labs) {
    const host = (b: PiBoard) => b.ip ?? `${b.hostname}.${lab.network.domain}`;
    const [master, ...nodes] = boardsOf(lab);
    const n = lab.name;
    lines.push(
      `[${n}-master]`,
      ...(master ? [host(master)] : []),
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
      `fqdn_master="${master?.hostname}.${lab.network.domain}"`,
      ...(master?.ip ? [`network_address_master="${master.ip}"`] : []),
      "",
    );
  }
  lines.push(
    "[master:children]",
    ...labs.map((l) => `${l.name}-master`),
    "",
    "[nodes:children]",
    ...labs.map((l) => `${l.name}-nodes`),
    "",
  );
  return lines.join("\n");
}

/** flash copies its arguments through `eval` inside double quotes: these characters break it. */
const FLASH_UNSAFE = /["$`\\\n\r]/;

export function flashCommand(
  files: { userData: string; metaData: string; networkConfig?: string },
  image: string,
): string {
  return [
    "flash",
    "--userdata",
    files.userData,
    "--metadata",
    files.metaData,
    ...(files.networkConfig ? ["--file", files.networkConfig] : []),
    image,
  ]
    .map(shellQuote)
    .join(" ");
}

export interface FlashConfigOptions {
  /** One lab, or several clusters that share one inventory (the seed's `cluster` file). */
  labs: string[];
  cwd: string;
  /** For Wi-Fi passphrases given by pskEnv. */
  env: NodeJS.ProcessEnv;
  out: string;
  /** Image for the flash commands of every lab; default: each lab's image. */
  image?: string;
}

export interface FlashCluster {
  lab: PiLab;
  labFile: string;
  release: string;
  image: string;
  /** Where the release image is published, when the image is a release download. */
  imageUrl?: string;
  method: NetworkMethod;
}

export interface FlashConfigResult {
  clusters: FlashCluster[];
  out: string;
  inventory: string;
  boards: (BoardFiles & { cluster: string; flash: string })[];
  warnings: Problem[];
}

/** What flash-config wrote into --out (board directories and the inventory): its own output. */
const FLASH_RECORD = ".k8slab-flash-config.json";
const flashRecordSchema = z.object({ entries: z.array(z.string().regex(/^[a-z0-9][a-z0-9-]*$/)) });

/** Into the staging directory: nothing reads it before the swap, so plain writes do. */
async function writeNew(path: string, text: string, mode = 0o644): Promise<void> {
  await writeFile(path, text, { mode, flag: "wx" });
  await chmod(path, mode);
}

/** The Wi-Fi passphrase from the environment or a file next to the lab, as a PSK. */
async function readWifiPsk(w: PiWifi, labPath: string, env: NodeJS.ProcessEnv): Promise<string> {
  let secret: string | undefined;
  if (w.pskEnv) {
    secret = env[w.pskEnv];
    if (!secret) {
      throw new K8slabError(`network.wifi.pskEnv: ${w.pskEnv} is not set`, {
        exitCode: 2,
        hint: `export ${w.pskEnv}='the Wi-Fi passphrase', then run the command again`,
      });
    }
  } else if (w.pskFile) {
    const file = resolve(dirname(labPath), w.pskFile);
    secret = await readFile(file, "utf8").then(
      (t) => t.replace(/\r?\n$/, ""),
      (error: unknown) => {
        throw new K8slabError(`network.wifi.pskFile: cannot read ${file}`, {
          exitCode: 2,
          hint: "put the Wi-Fi passphrase in that file (one line), or use pskEnv",
          cause: error,
        });
      },
    );
  }
  if (
    secret === undefined ||
    !(/^[\x20-\x7e]{8,63}$/.test(secret) || /^[0-9a-fA-F]{64}$/.test(secret))
  ) {
    throw new K8slabError(
      "the Wi-Fi passphrase must be 8 to 63 printable ASCII characters (or a 64-hex PSK)",
      { exitCode: 2, hint: "check the value of network.wifi.pskEnv or pskFile" },
    );
  }
  return wpaPsk(w.ssid, secret);
}

/** Several clusters in one inventory: names, hostnames and addresses must not collide. */
function checkClusters(clusters: FlashCluster[]): void {
  const problems: string[] = [];
  const names = new Map<string, string>();
  const hosts = new Map<string, string>();
  for (const c of clusters) {
    const seenName = names.get(c.lab.name);
    if (seenName)
      problems.push(`${c.labFile}: cluster name ${c.lab.name} is also used by ${seenName}`);
    else names.set(c.lab.name, c.labFile);
    for (const b of boardsOf(c.lab)) {
      for (const key of [b.hostname, ...(b.ip ? [b.ip] : [])]) {
        const other = hosts.get(key);
        if (other && other !== c.labFile) {
          problems.push(`${c.labFile}: ${key} (${b.hostname}) is also in ${other}`);
        } else hosts.set(key, c.labFile);
      }
    }
  }
  if (problems.length > 0) {
    throw new K8slabError(
      `these clusters cannot share one inventory:\n  ${problems.join("\n  ")}`,
      {
        exitCode: 2,
        hint: "give every cluster its own name, hostnames and addresses",
      },
    );
  }
}

/** Write every board's cloud-init files and the inventory; return the flash commands. */
export async function writeFlashConfig(options: FlashConfigOptions): Promise<FlashConfigResult> {
  const loaded = [];
  for (const ref of options.labs) loaded.push(await loadPiLab(ref, { cwd: options.cwd }));
  const clusters: FlashCluster[] = loaded.map(({ lab, file }) => {
    const { release, image: labImage, method } = piLabImage(lab);
    const image = options.image ?? labImage;
    const fromImage = releaseOfImage(image);
    return {
      lab,
      labFile: file,
      release,
      image,
      ...(fromImage === release && !image.includes("/")
        ? { imageUrl: releaseImageUrl(release) }
        : {}),
      method,
    };
  });
  checkClusters(clusters);
  const warnings = loaded.flatMap((l) => l.warnings);
  for (const c of clusters) {
    const named = releaseOfImage(c.image);
    if (options.image && named && named !== c.release) {
      warnings.push({
        severity: "warning",
        path: "hypriotos",
        file: c.labFile,
        message: `--image ${c.image} is HypriotOS ${named}, but the lab's files are written for ${c.release}`,
        hint: `set hypriotos: ${named} in ${c.labFile}`,
      });
    }
  }

  const out = resolve(options.cwd, options.out);
  const shown = (p: string) => {
    const r = relative(options.cwd, p);
    return r === "" || r.startsWith("..") || isAbsolute(r) ? p : r;
  };
  for (const [what, value] of [
    ["--out", shown(out)],
    ...clusters.map((c) => ["the image", c.image] as const),
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
  const secrets = new Map<PiLab, PiSecrets>();
  for (const [i, c] of clusters.entries()) {
    const w = c.lab.network.wifi;
    const path = loaded[i]?.path ?? "";
    secrets.set(c.lab, w ? { wifiPsk: await readWifiPsk(w, path, options.env) } : {});
  }

  const boards: FlashConfigResult["boards"] = [];
  const inventory = join(out, "cluster");
  const rendered = clusters.map((c) => ({ c, files: renderBoards(c.lab, secrets.get(c.lab)) }));
  for (const { c, files } of rendered) {
    for (const b of files) {
      const dir = join(out, b.hostname);
      const userData = join(dir, "user-data");
      const metaData = join(dir, "meta-data");
      const networkConfig = b.networkConfig ? join(dir, "network-config") : undefined;
      boards.push({
        cluster: c.lab.name,
        hostname: b.hostname,
        role: b.role,
        ...(b.ip ? { ip: b.ip } : {}),
        userData,
        metaData,
        ...(networkConfig ? { networkConfig } : {}),
        instanceId: b.instanceId,
        flash: flashCommand(
          {
            userData: shown(userData),
            metaData: shown(metaData),
            ...(networkConfig ? { networkConfig: shown(networkConfig) } : {}),
          },
          c.image,
        ),
      });
    }
  }
  const entries = [...boards.map((b) => b.hostname), "cluster"];
  await withLabLock(out, "flash-config", async () => {
    // The rule render follows: a directory that is empty or that flash-config wrote (its
    // record lists what it wrote), never one someone else filled.
    const present = await contentEntries(out, "--out");
    const record =
      present.length > 0
        ? await readJsonFile(join(out, FLASH_RECORD), flashRecordSchema, {
            what: "flash-config's record of what it wrote",
            fix: `remove ${join(out, FLASH_RECORD)} and the files flash-config wrote, or choose another --out`,
          })
        : undefined;
    if (present.length > 0 && record === undefined) {
      throw notOursError(out, "a directory k8slab flash-config wrote", "--out");
    }
    await removeLeftovers(out);
    // Everything is written into a staging directory and swapped in, the record last: an
    // interrupted run leaves the previous output (or nothing), never half of one. Boards of the
    // previous run that are gone from the labs go too.
    const swapped = [...new Set([...(record?.entries ?? []), ...entries]), FLASH_RECORD];
    await stageAndSwap(out, swapped, async (stage) => {
      for (const { c, files } of rendered) {
        for (const b of files) {
          const dir = join(stage, b.hostname);
          await mkdir(dir);
          // user-data may hold a Wi-Fi PSK.
          await writeNew(join(dir, "user-data"), b.userData, c.lab.network.wifi ? 0o600 : 0o644);
          await writeNew(join(dir, "meta-data"), b.metaData);
          if (b.networkConfig) await writeNew(join(dir, "network-config"), b.networkConfig);
        }
      }
      await writeNew(join(stage, "cluster"), renderInventory(clusters.map((c) => c.lab)));
      await writeNew(join(stage, FLASH_RECORD), `${JSON.stringify({ entries }, null, 2)}\n`);
    });
  });
  return { clusters, out, inventory, boards, warnings };
}
