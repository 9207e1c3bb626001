import { readFile, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { z } from "zod";
import { K8slabError } from "../errors.js";
import { builtinLabsDir } from "../lab/load.js";
import type { Problem, RuleProblem } from "../lab/problems.js";
import { validateYamlText } from "../lab/validate-yaml.js";
import { broadcast, contains, hasHostBits, ipToInt, parseCidr } from "../util/ipv4.js";
import { InvalidFileError, ruleError } from "../lab/problems.js";

/**
 * The Raspberry Pi cluster lab (seed 002): real boards flashed with HypriotOS, one master and N
 * nodes, each with a hostname such as bee42-crew-01-001 and (optionally) a static address. Every
 * value ends up in cloud-init YAML, a shell command line or an Ansible inventory, so every
 * string is held to a narrow pattern here.
 */

export const PI_LAB_KIND = "pi-cluster";
export const NETWORK_METHODS = ["dhcpcd", "ifupdown"] as const;

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
});

export const piLabSchema = z.strictObject({
  kind: z.literal(PI_LAB_KIND).describe("Marks a Raspberry Pi cluster lab."),
  name: z
    .string()
    .regex(CLUSTER_NAME, "must be lowercase letters, digits and '-', such as cluster-1")
    .describe("Cluster name; the Ansible groups are <name>-master and <name>-nodes."),
  description: z.string().max(300).optional(),
  image: z
    .string()
    .regex(IMAGE_FILE, "must be an image file name such as hypriotos-rpi-v1.9.0.img.zip")
    .default("hypriotos-rpi-v1.9.0.img.zip")
    .describe(
      "The HypriotOS image the flash commands write (e.g. one built by build-hypriot-image).",
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
        .default("dhcpcd")
        .describe(
          "How the image sets a static address: dhcpcd (HypriotOS 1.9+) or ifupdown (1.7/1.8).",
        ),
    })
    .default({ domain: "local", method: "dhcpcd" }),
  master: board,
  nodes: z.array(board).max(100).default([]),
});

export type PiLab = z.infer<typeof piLabSchema>;
export type PiBoard = z.infer<typeof board> & { role: "master" | "node" };

export function boardsOf(lab: PiLab): PiBoard[] {
  return [
    { ...lab.master, role: "master" },
    ...lab.nodes.map((n) => ({ ...n, role: "node" as const })),
  ];
}

const err = ruleError;

export function checkPiLabRules(lab: PiLab): RuleProblem[] {
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
  const { value, problems } = validateYamlText(file, text, piLabSchema, checkPiLabRules);
  return value ? { lab: value, problems } : { problems };
}

/** Built-in Pi labs live in labs/pi/ so that VM lab listing does not see them. */
export function builtinPiLabsDir(): string {
  return join(builtinLabsDir(), "pi");
}

export interface LoadedPiLab {
  lab: PiLab;
  file: string;
  path: string;
  warnings: Problem[];
}

export async function loadPiLab(ref: string, options: { cwd: string }): Promise<LoadedPiLab> {
  const looksLikePath = ref.includes("/") || ref.includes("\\") || /\.ya?ml$/i.test(ref);
  let file = ref;
  let path = resolve(options.cwd, ref);
  if (!looksLikePath && !(await isFile(path))) {
    const builtin = join(builtinPiLabsDir(), `${ref}.yaml`);
    if (!/^[a-z0-9-]+$/.test(ref) || !(await isFile(builtin))) {
      throw new K8slabError(`there is no built-in Pi cluster lab called ${JSON.stringify(ref)}`, {
        exitCode: 2,
        hint: "built-in: pi-cluster; or give a path to a lab file with kind: pi-cluster",
      });
    }
    file = `${ref}.yaml`;
    path = builtin;
  } else if (!(await isFile(path))) {
    throw new K8slabError(`lab file ${ref} does not exist`, {
      exitCode: 2,
      hint: "give a path to a lab file with kind: pi-cluster, or the built-in name pi-cluster",
    });
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

async function isFile(path: string): Promise<boolean> {
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
