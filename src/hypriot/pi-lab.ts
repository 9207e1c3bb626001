import { readFile, stat } from "node:fs/promises";
import { z } from "zod";
import { K8slabError } from "../errors.js";
import {
  builtinPiLabsDir,
  listLabFolder,
  PI_LAB_KIND,
  resolveLab,
  type BuiltinLab,
} from "../lab/load.js";
import type { Problem, RuleProblem } from "../lab/problems.js";
import { validateYamlText, type Rule } from "../lab/validate-yaml.js";
import { broadcast, contains, hasHostBits, ipToInt, parseCidr } from "../util/ipv4.js";
import { InvalidFileError, ruleError, ruleWarning } from "../lab/problems.js";
import {
  NETWORK_METHODS,
  NEWEST_KNOWN_RELEASE,
  releaseImageName,
  releaseNetwork,
  releaseOfImage,
  type NetworkMethod,
} from "./releases.js";

/**
 * The Raspberry Pi cluster lab (seed 002): real boards flashed with HypriotOS, one master and N
 * nodes, each with a hostname such as bee42-crew-01-001 and (optionally) a static address. Every
 * value ends up in cloud-init YAML, a shell command line or an Ansible inventory, so every
 * string is held to a narrow pattern here.
 */

export { builtinPiLabsDir, PI_LAB_KIND };

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const CIDR =
  /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}\/(3[0-2]|[12]?\d)$/;
/** A hostname as the boards get it (one DNS label; avahi announces <hostname>.local). */
const HOSTNAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
/** Cluster and group names: Ansible group names of the seed's shape (cluster-1). */
const CLUSTER_NAME = /^[a-z][a-z0-9-]{0,40}[a-z0-9]$/;
const USER_NAME = /^[a-z_][a-z0-9_-]{0,31}$/;
const DOMAIN = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$/;
/** One OpenSSH public key line: type, base64 body, optional plain comment. No newlines. */
export const SSH_PUBLIC_KEY =
  /^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/]{16,16384}={0,3}( [A-Za-z0-9@._+,=/-]{1,100}( [A-Za-z0-9@._+,=/-]{1,100}){0,4})?$/;
/** Base64 of "slab-example-key-do-not-use", inside the example key of labs/pi/pi-cluster.yaml. */
const EXAMPLE_KEY_MARK = "c2xhYi1leGFtcGxlLWtleS1kby1ub3QtdXNl";
const IMAGE_FILE = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}\.img(\.zip)?$/;
const RELEASE_TAG = /^v\d{1,3}\.\d{1,3}\.\d{1,3}(-[0-9A-Za-z.]{1,20})?$/;
const ENV_NAME = /^[A-Z_][A-Z0-9_]{0,63}$/;
const PLAIN_PATH = /^[A-Za-z0-9._~/-]{1,255}$/;
/** What wpa_supplicant.conf can hold between double quotes: printable ASCII but " and \. */
const SSID = /^[\x20\x21\x23-\x5b\x5d-\x7e]{1,32}$/;

const ipv4 = z.string().regex(IPV4, "must be an IPv4 address such as 192.168.0.11");
const hostname = z
  .string()
  .regex(
    HOSTNAME,
    "must be a hostname: lowercase letters, digits and '-', at most 63, such as bee42-crew-01-001",
  );

const board = z.strictObject({
  hostname: hostname.describe("The board's hostname (announced as <hostname>.local)."),
  ip: ipv4.optional().describe("Static address on eth0; without it the board asks DHCP."),
  wifi: z
    .boolean()
    .optional()
    .describe("false: this board does not join network.wifi (default: it does when it is set)."),
});

const wifi = z
  .strictObject({
    ssid: z
      .string()
      .regex(SSID, 'must be 1 to 32 printable ASCII characters without " and \\')
      .describe("The Wi-Fi network's name."),
    country: z
      .string()
      .regex(/^[A-Z]{2}$/, "must be a two-letter country code such as DE")
      .describe("Regulatory country of the Wi-Fi (wpa_supplicant's country=)."),
    pskEnv: z
      .string()
      .regex(ENV_NAME, "must be an environment variable name such as K8SLAB_WIFI_PSK")
      .optional()
      .describe("Read the passphrase (8-63 characters) or 64-hex PSK from this variable."),
    pskFile: z
      .string()
      .regex(PLAIN_PATH, "must be a plain path")
      .optional()
      .describe("Or from this file, relative to the lab file."),
  })
  .refine((w) => (w.pskEnv === undefined) !== (w.pskFile === undefined), {
    message: "give exactly one of pskEnv or pskFile (never the passphrase itself)",
  })
  .describe(
    "Wi-Fi for the boards (wlan0, DHCP); user-data gets the PSK derived from the passphrase.",
  );

const VERSION = /^v?\d+(\.\d+){0,3}([-+][0-9A-Za-z.-]{1,40})?$/;
const version = z.string().regex(VERSION, "must be a version such as v1.9.3 or 3.2.18");
const piArtifactFile = z.strictObject({
  url: z
    .url({ protocol: /^https?$/, error: "must be an http(s) URL" })
    .max(2048)
    .refine((u) => !/['"`$\\\s<>]/.test(u), "must not contain quotes, spaces, '$' or backslashes"),
  sha256: z
    .string()
    .regex(/^[a-f0-9]{64}$/, "must be 64 lowercase hex digits")
    .optional()
    .describe("Upstream's checksum; without one the first download's is recorded."),
});
/** One component's files for the boards' architectures. */
const piArtifactUrls = z
  .strictObject({ arm: piArtifactFile.optional(), arm64: piArtifactFile.optional() })
  .describe("The file for 32-bit ARM boards (arm) and for 64-bit ones (arm64).");

/**
 * What `k8slab create` installs on the boards (the lab becomes a lab of provider ssh). Every
 * field has a default: the upstream release archives of each component, per architecture.
 */
const kubernetesSection = z
  .strictObject({
    version: version
      .default("v1.9.3")
      .describe("Kubernetes release: kubernetes-server-linux-<arch>.tar.gz from dl.k8s.io."),
    etcd: version
      .default("v3.2.18")
      .describe(
        "etcd release (GitHub archives; arm64 from v3.2.1 on, and no 32-bit ARM build at all).",
      ),
    flannel: version.default("v0.10.0").describe("flannel release (GitHub archives)."),
    docker: z
      .union([z.literal("image"), piArtifactUrls])
      .default("image")
      .describe(
        "image: the Docker the HypriotOS image ships; or Docker's static archive per architecture ({arm: {url}, arm64: {url}}, a version Kubernetes 1.9 supports: up to 17.03).",
      ),
    arch: z
      .enum(["arm", "arm64"])
      .optional()
      .describe(
        "The boards' architecture (default: the release's; every HypriotOS v1.x image is 32-bit, arm).",
      ),
    artifacts: z
      .strictObject({
        kubernetes: piArtifactUrls.optional(),
        etcd: piArtifactUrls.optional(),
        flannel: piArtifactUrls.optional(),
      })
      .default({})
      .describe("Other locations for the components' archives, per architecture."),
    podNetwork: z
      .string()
      .regex(CIDR, "must be an IPv4 CIDR such as 10.244.0.0/16")
      .default("10.244.0.0/16"),
    serviceNetwork: z
      .string()
      .regex(CIDR, "must be an IPv4 CIDR such as 10.32.0.0/24")
      .default("10.32.0.0/24"),
    schedulableMaster: z
      .boolean()
      .default(false)
      .describe("Pods may run on the master too (seed 000); always so with no nodes."),
  })
  .describe("What `k8slab create` installs on the boards (over SSH, as the user above).");

export const piLabSchema = z.strictObject({
  kind: z.literal(PI_LAB_KIND).describe("Marks a Raspberry Pi cluster lab."),
  name: z
    .string()
    .regex(CLUSTER_NAME, "must be lowercase letters, digits and '-', such as cluster-1")
    .describe("Cluster name; the Ansible groups are <name>-master and <name>-nodes."),
  description: z.string().max(300).optional(),
  hypriotos: z
    .string()
    .regex(RELEASE_TAG, "must be a HypriotOS release tag such as v1.7.1")
    .optional()
    .describe(
      "HypriotOS release of the image (for one built by build-hypriot-image: the checkout's); it decides how eth0 is set up. Default: the release in the image's name.",
    ),
  image: z
    .string()
    .regex(IMAGE_FILE, "must be an image file name such as hypriotos-rpi-v1.7.1.img.zip")
    .optional()
    .describe(
      "The image the flash commands write (default: hypriotos-rpi-<hypriotos>.img.zip, the release download).",
    ),
  user: z
    .strictObject({
      name: z
        .string()
        .regex(USER_NAME, "must be a Linux user name such as pirate")
        .default("pirate"),
      sshAuthorizedKeys: z
        .array(
          z
            .string()
            .regex(
              SSH_PUBLIC_KEY,
              "must be one OpenSSH public key line such as 'ssh-ed25519 AAAA... name@example.org'",
            ),
        )
        .min(1, "at least one SSH public key, or no one can log in")
        .max(20),
    })
    .describe("The login user cloud-init creates on every board."),
  network: z
    .strictObject({
      cidr: z
        .string()
        .regex(CIDR, "must be an IPv4 CIDR such as 192.168.0.0/24")
        .optional()
        .describe("The boards' LAN; needed when any board has a static ip."),
      gateway: ipv4.optional(),
      dns: z.array(ipv4).max(3).optional(),
      domain: z
        .string()
        .regex(DOMAIN, "must be a DNS domain such as local")
        .default("local")
        .describe("Domain of the master's FQDN in the inventory (avahi: local)."),
      method: z
        .enum(NETWORK_METHODS)
        .optional()
        .describe(
          "How the image brings up eth0: ifupdown (HypriotOS v1.7.x), dhcpcd (v1.8.0 to v1.12.0), network-config (v1.12.1 on). Default: the release's; another is refused.",
        ),
      wifi: wifi.optional(),
    })
    .default({ domain: "local" }),
  master: board,
  nodes: z.array(board).max(100).default([]),
  kubernetes: kubernetesSection.optional(),
});

export type PiLab = z.infer<typeof piLabSchema>;
export type PiBoard = z.infer<typeof board> & { role: "master" | "node" };
export type PiWifi = z.infer<typeof wifi>;
export type PiKubernetes = z.infer<typeof kubernetesSection>;
export type PiArtifactUrls = z.infer<typeof piArtifactUrls>;

export function boardsOf(lab: PiLab): PiBoard[] {
  return [
    { ...lab.master, role: "master" },
    ...lab.nodes.map((n) => ({ ...n, role: "node" as const })),
  ];
}

/** The release, image and network method of a valid lab (the rules make sure they resolve). */
export function piLabImage(lab: PiLab): {
  release: string;
  image: string;
  method: NetworkMethod;
} {
  const release = lab.hypriotos ?? (lab.image ? releaseOfImage(lab.image) : undefined) ?? "";
  const method = lab.network.method ?? releaseNetwork(release).method ?? "dhcpcd";
  return { release, image: lab.image ?? releaseImageName(release), method };
}

export function boardJoinsWifi(lab: PiLab, b: PiBoard): boolean {
  return lab.network.wifi !== undefined && b.wifi !== false;
}

/** The release against the image name and the network method (seed 002 flashes v1.7.1). */
function releaseRules(lab: PiLab): RuleProblem[] {
  const named = lab.image ? releaseOfImage(lab.image) : undefined;
  const release = lab.hypriotos ?? named;
  if (release === undefined) {
    return [
      err(
        "hypriotos",
        `say which HypriotOS release ${lab.image ?? "the image"} is: it decides how the boards set up eth0`,
        "add hypriotos: v1.7.1 (the release the image was built from)",
      ),
    ];
  }
  const problems: RuleProblem[] = [];
  if (lab.hypriotos && named && named !== lab.hypriotos) {
    problems.push(
      err("image", `${lab.image} is HypriotOS ${named}, but hypriotos says ${lab.hypriotos}`),
    );
  }
  const net = releaseNetwork(release);
  const path = lab.hypriotos ? "hypriotos" : "image";
  if (net.method === undefined) {
    problems.push(
      err(
        path,
        `${release}: ${net.why}; k8slab writes cloud-init files`,
        "use HypriotOS v1.7.0 or newer",
      ),
    );
  } else if (lab.network.method && lab.network.method !== net.method) {
    problems.push(
      err(
        "network.method",
        `HypriotOS ${release} ignores ${lab.network.method}: ${net.why}`,
        `remove network.method (k8slab uses ${net.method} for ${release})`,
      ),
    );
  } else if (!net.known) {
    problems.push(
      ruleWarning(
        path,
        `k8slab knows HypriotOS releases up to ${NEWEST_KNOWN_RELEASE}; it assumes ${release} sets up eth0 like them (${net.method})`,
      ),
    );
  }
  return problems;
}

const err = ruleError;

/** The release rules and the board rules: each is skipped when a section it reads is malformed. */
export const PI_LAB_RULES: readonly Rule<PiLab>[] = [releaseRules, boardRules];

function boardRules(lab: PiLab): RuleProblem[] {
  const problems: RuleProblem[] = [];
  const paths = ["master", ...lab.nodes.map((_, i) => `nodes.${i}`)];
  const boards = boardsOf(lab);
  const cidr = lab.network.cidr;
  if (cidr && hasHostBits(cidr)) {
    problems.push(
      err("network.cidr", `${cidr} has host bits set`, `did you mean ${formatNet(cidr)}?`),
    );
  }
  const net = cidr ? parseCidr(cidr) : undefined;
  const hostnames = new Map<string, string>();
  const ips = new Map<string, string>();
  boards.forEach((b, i) => {
    const path = paths[i] ?? "";
    const seen = hostnames.get(b.hostname);
    if (seen)
      problems.push(err(`${path}.hostname`, `${b.hostname} is also the hostname of ${seen}`));
    else hostnames.set(b.hostname, path);
    if (b.ip === undefined) return;
    const other = ips.get(b.ip);
    if (other) problems.push(err(`${path}.ip`, `${b.ip} is used by ${other}`));
    else ips.set(b.ip, b.hostname);
    if (!net) {
      problems.push(
        err(
          `${path}.ip`,
          "a static ip needs network.cidr (the prefix length of the LAN)",
          "add network: { cidr: 192.168.0.0/24 }",
        ),
      );
      return;
    }
    if (!contains(net, b.ip))
      problems.push(err(`${path}.ip`, `${b.ip} is outside network.cidr ${cidr}`));
    else if (
      net.prefix < 31 &&
      (ipToInt(b.ip) === net.network || ipToInt(b.ip) === broadcast(net))
    ) {
      problems.push(err(`${path}.ip`, `${b.ip} is the network or broadcast address of ${cidr}`));
    }
    if (lab.network.gateway === b.ip) {
      problems.push(err(`${path}.ip`, `${b.ip} is the gateway's address`));
    }
  });
  if (lab.network.gateway && net && !contains(net, lab.network.gateway)) {
    problems.push(err("network.gateway", `${lab.network.gateway} is outside network.cidr ${cidr}`));
  }
  lab.user.sshAuthorizedKeys.forEach((key, i) => {
    if (key.includes(EXAMPLE_KEY_MARK)) {
      problems.push({
        severity: "warning",
        path: `user.sshAuthorizedKeys.${i}`,
        message: "this is the built-in lab's example key: no one can log in with it",
        hint: "copy the lab file and put your own key there (cat ~/.ssh/id_ed25519.pub)",
      });
    }
  });
  boards.forEach((b, i) => {
    if (b.wifi === true && lab.network.wifi === undefined) {
      problems.push(err(`${paths[i] ?? ""}.wifi`, "there is no network.wifi to join"));
    }
  });
  if ((lab.network.gateway || lab.network.dns) && !boards.some((b) => b.ip)) {
    problems.push({
      severity: "warning",
      path: lab.network.gateway ? "network.gateway" : "network.dns",
      message: "no board has a static ip, so gateway and dns are not used (DHCP provides them)",
    });
  }
  return problems;
}

function formatNet(cidr: string): string {
  const c = parseCidr(cidr);
  return `${[24, 16, 8, 0].map((s) => (c.network >>> s) & 255).join(".")}/${c.prefix}`;
}

export function validatePiLabText(
  file: string,
  text: string,
): { lab?: PiLab; problems: Problem[] } {
  const { value, problems } = validateYamlText(file, text, piLabSchema, PI_LAB_RULES);
  return value ? { lab: value, problems } : { problems };
}

export interface LoadedPiLab {
  lab: PiLab;
  file: string;
  path: string;
  warnings: Problem[];
}

export async function loadPiLab(ref: string, options: { cwd: string }): Promise<LoadedPiLab> {
  const { file, path, kind } = await resolveLab(ref, options.cwd);
  if (kind !== PI_LAB_KIND) {
    throw new K8slabError(
      `${file} is a VM lab, not a Raspberry Pi cluster lab (kind: ${PI_LAB_KIND})`,
      {
        exitCode: 2,
        hint: `build it with: k8slab create ${ref}; flash-config takes labs with kind: ${PI_LAB_KIND} (see: k8slab labs)`,
      },
    );
  }
  const { lab, problems } = validatePiLabText(file, await readFile(path, "utf8"));
  if (!lab) {
    throw new InvalidFileError(
      file,
      "Pi cluster lab",
      problems,
      `fix the lines above, then run: k8slab flash-config ${ref} --out DIR`,
    );
  }
  return { lab, file, path, warnings: problems };
}

/** The valid built-in Pi cluster labs (labs/pi/*.yaml); `nodes` counts their boards. */
export function listBuiltinPiLabs(): Promise<BuiltinLab[]> {
  return listLabFolder(builtinPiLabsDir(), validatePiLabText, (lab) => boardsOf(lab).length);
}

export async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/** labs/pi/schema.json for editors (the input shape: defaults make keys optional). */
export function piLabJsonSchemaText(): string {
  const schema = z.toJSONSchema(piLabSchema, { io: "input", target: "draft-7" });
  return `${JSON.stringify({ ...schema, title: "k8slab Pi cluster lab file" }, null, 2)}\n`;
}
