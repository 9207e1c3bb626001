import { z } from "zod";
import { PROVIDERS } from "./providers.js";

/**
 * The lab file format. This one schema gives the TypeScript type (`Lab`), the validation, and the
 * generated `labs/schema.json` that editors use through `# yaml-language-server: $schema=`.
 * Cross-field rules (overlaps, duplicates, quorum) live in rules.ts.
 */

/** DNS-1123 label: what Kubernetes and Vagrant accept as a node or lab name. */
export const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const CIDR =
  /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}\/(3[0-2]|[12]?\d)$/;
/** Plain version strings: v1.9.3, 1.13.1, 3.2.18, 1.14.8. */
const VERSION = /^v?\d+(\.\d+){0,3}([-+][0-9A-Za-z.-]{1,40})?$/;
/** Box names as Vagrant Cloud writes them (ubuntu/xenial64) or a plain local name. */
const BOX = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(\/[A-Za-z0-9][A-Za-z0-9._-]{0,99})?$/;
/** Container image references: registry/path:tag with no shell metacharacters. */
const IMAGE = /^[a-z0-9][a-z0-9._\-/:]{0,254}(@sha256:[a-f0-9]{64})?$/;
/** Label keys (optional DNS prefix) and values as Kubernetes allows them. */
const LABEL_KEY =
  /^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;
const HOSTNAME =
  /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*(:\d{1,5})?$/;
const ENV_NAME = /^[A-Z_][A-Z0-9_]{0,63}$/;
/** Relative or absolute paths made of ordinary characters only. */
const PLAIN_PATH = /^[A-Za-z0-9._~/-]{1,255}$/;
const SHA256 = /^[a-f0-9]{64}$/;
/** A registry host[:port] with an optional path: gcr.io/google_containers, 10.0.0.5:5000. */
const REGISTRY_PATH =
  /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*(:\d{1,5})?(\/[a-z0-9]+([._-][a-z0-9]+)*)*$/;
const PRELOAD_NAME = /^[a-z][a-z0-9-]{0,23}$/;

/** The tag of an image reference ("" when it has none). */
export function imageTag(ref: string): string {
  const name = ref.replace(/@sha256:[a-f0-9]{64}$/, "");
  const colon = name.lastIndexOf(":");
  return colon > name.lastIndexOf("/") ? name.slice(colon + 1) : "";
}

/** Images the nodes can make from their own programs (images.build). */
export const BUILT_IMAGES = ["hyperkube", "pause"] as const;

const ipv4 = z.string().regex(IPV4, "must be an IPv4 address such as 192.168.56.10");
const cidr = z.string().regex(CIDR, "must be an IPv4 CIDR such as 10.1.0.0/16");
const version = z.string().regex(VERSION, "must be a version such as v1.9.3 or 3.2.18");
const image = z.string().regex(IMAGE, "must be an image reference such as registry/name:tag");
const dnsLabel = z
  .string()
  .regex(DNS_LABEL, "must be a DNS-1123 label: lowercase letters, digits and '-', at most 63");

export const ROLES = ["etcd", "control-plane", "worker"] as const;
export const role = z.enum(ROLES);
export type Role = z.infer<typeof role>;

export { PROVIDERS, type ProviderName } from "./providers.js";

/** CPU architectures a node can have, as Kubernetes, etcd and flannel name their release files. */
export const ARCHES = ["amd64", "arm", "arm64"] as const;
export const arch = z.enum(ARCHES);
export type Arch = z.infer<typeof arch>;

const boxSpec = z.strictObject({
  name: z.string().regex(BOX, "must be a box name such as ubuntu/xenial64"),
  version: z
    .string()
    .regex(
      /^[0-9<>=~!][0-9A-Za-z.<>=~!, -]{0,40}$/,
      "must be a box version constraint such as 20180309.0.0 or >= 2.0",
    )
    .optional(),
  url: z
    .string()
    .regex(/^(https?|file):\/\/[^\s'"`$\\]{1,2000}$/, "must be an http(s) or file URL")
    .optional()
    .describe("Where to fetch the box from when it is not in a catalogue."),
});
export type BoxSpec = z.infer<typeof boxSpec>;

/** An SSH login: `~/` in identityFile is the user's home directory. */
const sshUser = z
  .string()
  .regex(/^[a-z_][a-z0-9_.-]{0,31}$/, "must be a plain login name such as pirate")
  .describe("The login user; a user other than root runs every command through `sudo -n`.");
const sshPort = z.number().int().min(1).max(65535);
const sshIdentity = z
  .string()
  .regex(
    /^(~\/|\/)[A-Za-z0-9._~/-]{1,254}$/,
    "must be a plain absolute path or one under ~/, such as ~/.ssh/id_ed25519",
  )
  .describe("The private key to log in with; without it, ssh's agent and default keys are used.");
const SSH_HOST =
  /^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*|(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3})$/;

const sshSpec = z
  .strictObject({
    user: sshUser,
    port: sshPort.default(22),
    identityFile: sshIdentity.optional(),
    connectTimeoutSeconds: z
      .number()
      .int()
      .min(1)
      .max(300)
      .default(15)
      .describe("How long one SSH connection may take to open."),
  })
  .describe("How k8slab logs in to the nodes of a lab whose provider is ssh.");
export type SshSpec = z.infer<typeof sshSpec>;

const nodeSsh = z
  .strictObject({
    host: z
      .string()
      .regex(SSH_HOST, "must be a host name or an IPv4 address")
      .optional()
      .describe("Where to reach the node over SSH (default: its ip)."),
    user: sshUser.optional(),
    port: sshPort.optional(),
    identityFile: sshIdentity.optional(),
  })
  .describe("This node's SSH login where it differs from the lab's `ssh:`.");

const node = z
  .strictObject({
    name: dnsLabel.describe("Hostname of the VM and the Kubernetes node name."),
    ip: ipv4.describe("Static address on the host-only network (the VM's private NIC)."),
    memory: z.number().int().min(256).max(65536).default(1024).describe("Memory in MB."),
    cpus: z.number().int().min(1).max(32).default(1),
    roles: z
      .array(role)
      .min(1, "a node needs at least one role")
      .refine((r) => new Set(r).size === r.length, "roles must not repeat")
      .describe("What runs on the node: etcd, control-plane, worker."),
    labels: z
      .record(
        z.string().regex(LABEL_KEY, "must be a Kubernetes label key"),
        z.string().regex(LABEL_VALUE, "must be a Kubernetes label value"),
      )
      .default({})
      .describe("Kubernetes node labels (seed 003)."),
    arch: arch
      .optional()
      .describe(
        "The node's CPU architecture (default amd64): it picks the artifacts' `urls` variant (arm: 32-bit ARM such as HypriotOS v1.x boards).",
      ),
    ssh: nodeSsh.optional(),
  })
  .describe("One VM, or one machine of an SSH lab.");

/** A path inside an archive: relative, no "..", ordinary characters only. */
const MEMBER = /^(?!.*(^|\/)\.\.(\/|$))[A-Za-z0-9._+-][A-Za-z0-9._+/-]{0,255}$/;
const BIN_NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$/;

export const ARTIFACT_KINDS = ["archive", "binary", "image", "file"] as const;

const artifactUrl = z
  .url({ protocol: /^https?$/, error: "must be an http(s) URL" })
  .max(2048)
  .refine((u) => !/['"`$\\\s<>]/.test(u), "must not contain quotes, spaces, '$' or backslashes");
const artifactSha256 = z
  .string()
  .regex(SHA256, "must be 64 lowercase hex digits")
  .optional()
  .describe(
    "Upstream's published checksum. Without one, the first download's checksum is recorded in the cache and every later use is verified against it.",
  );

/** One architecture's file of a per-architecture artifact. */
const artifactVariant = z.strictObject({ url: artifactUrl, sha256: artifactSha256 });

const artifact = z
  .strictObject({
    url: artifactUrl.optional().describe("The file, the same for every node (or give `urls`)."),
    sha256: artifactSha256,
    urls: z
      .strictObject({
        amd64: artifactVariant.optional(),
        arm: artifactVariant.optional(),
        arm64: artifactVariant.optional(),
      })
      .refine((u) => Object.keys(u).length > 0, "give at least one architecture's url")
      .optional()
      .describe(
        "Instead of `url`: one file per node architecture ({amd64: {url, sha256}, arm: {...}, arm64: {...}}); each node gets its architecture's file under the artifact's name.",
      ),
    kind: z
      .enum(ARTIFACT_KINDS)
      .default("archive")
      .describe(
        "archive: a .tar.gz whose `install` members go to /opt/k8slab/bin; binary: installed as /opt/k8slab/bin/<name>; image: a docker-archive loaded into Docker; file: kept in /opt/k8slab/files.",
      ),
    install: z
      .record(
        z.string().regex(MEMBER, "must be a relative path inside the archive"),
        z.string().regex(BIN_NAME, "must be a plain program name"),
      )
      .default({})
      .describe("archive members to install, as member path: program name"),
    roles: z
      .array(role)
      .optional()
      .describe("Only nodes with one of these roles fetch it (default: every node)."),
  })
  .refine((a) => a.kind !== "archive" || Object.keys(a.install).length > 0, {
    message: "an archive needs `install:` (member path: program name)",
    path: ["install"],
  })
  .refine((a) => (a.url === undefined) !== (a.urls === undefined), {
    message: "give exactly one of url (one file for every node) or urls (one per architecture)",
  })
  .refine((a) => a.urls === undefined || a.sha256 === undefined, {
    message: "with urls, give each architecture's sha256 beside its url",
    path: ["sha256"],
  });

export const labSchema = z
  .strictObject({
    name: dnsLabel.describe(
      "The lab's name. It names the lab directory, the kubeconfig cluster and context.",
    ),
    description: z
      .string()
      .max(500)
      .regex(/^[^\n\r]*$/, "must be a single line")
      .optional(),
    box: z
      .union([
        boxSpec,
        z
          .strictObject({
            virtualbox: boxSpec.optional(),
            libvirt: boxSpec.optional(),
          })
          .refine((b) => b.virtualbox || b.libvirt, "name a box for at least one provider"),
      ])
      .default({ name: "ubuntu/xenial64" })
      .describe(
        "The Vagrant box: one for every provider ({name, version, url}), or one per provider ({virtualbox: {...}, libvirt: {...}}), as boxes are often published for one provider only.",
      ),
    provider: z
      .strictObject({
        name: z.enum(PROVIDERS).default("virtualbox"),
        libvirt: z
          .strictObject({
            driver: z
              .enum(["auto", "kvm", "qemu"])
              .default("auto")
              .describe("kvm when hardware virtualisation works, qemu (software) otherwise."),
          })
          .default({ driver: "auto" }),
      })
      .default({ name: "virtualbox", libvirt: { driver: "auto" } })
      .describe(
        "virtualbox or libvirt: Vagrant boots the nodes as VMs. ssh: the nodes are machines that already run, reached over SSH (see `ssh:`); `box` does not apply.",
      ),
    ssh: sshSpec
      .optional()
      .describe(
        "Required when provider.name is ssh, and only then: the login for every node (nodes[].ssh overrides it per node).",
      ),
    network: z.strictObject({
      hostOnly: cidr.describe("The host-only (private) network every node sits on."),
      interface: z
        .string()
        .regex(/^[a-z][a-z0-9]{0,14}$/, "must be an interface name such as eth1")
        .optional()
        .describe(
          "The private NIC inside the VMs (eth1, enp0s8), checked by the base phase. Without it, the NIC is the one that holds the node's address; never Vagrant's NAT eth0.",
        ),
    }),
    nodes: z.array(node).min(1, "a lab needs at least one node").max(32),
    versions: z
      .strictObject({
        kubernetes: version,
        etcd: version,
        flannel: version,
        docker: version,
        kubeDns: version,
        dashboard: version,
      })
      .describe("Component versions."),
    images: z
      .strictObject({
        hyperkube: image,
        pause: image,
        kubeDns: image.optional(),
        dnsmasq: image.optional(),
        dnsSidecar: image.optional(),
        dashboard: image.optional(),
        build: z
          .array(z.enum(BUILT_IMAGES))
          .default(["hyperkube"])
          .refine((b) => new Set(b).size === b.length, "must not repeat")
          .describe(
            "Images made on the nodes from their own programs instead of coming from the host cache: hyperkube from the hyperkube program an artifact installs; pause as an init (tini, or a shell that reaps and exits on SIGTERM) in front of sleep, for a lab with no registry at all.",
          ),
        preload: z
          .record(
            z.string().regex(PRELOAD_NAME, "must be a plain name such as busybox"),
            image.refine(
              (ref) => !["", "latest"].includes(imageTag(ref)),
              "needs a tag other than latest: the kubelet pulls a :latest image on every start",
            ),
          )
          .default({})
          .describe(
            "Other images every node gets from the host cache, by a name of your choosing: what the workshop's own pods run. Pods use the reference as written (without its digest).",
          ),
        mirrors: z
          .record(
            z
              .string()
              .regex(REGISTRY_PATH, "must be a registry host[:port], optionally with a path"),
            z
              .string()
              .regex(REGISTRY_PATH, "must be a registry host[:port], optionally with a path"),
          )
          .default({})
          .describe(
            "Where to fetch a registry's images from instead, e.g. gcr.io/google_containers: registry.k8s.io. Images keep the names the manifests use.",
          ),
      })
      .describe(
        "Container images the cluster runs. Each comes from its registry once per host (k8slab cache pull), into the cache, and is served to the nodes and loaded there: the nodes never pull.",
      ),
    cluster: z.strictObject({
      podNetwork: cidr.describe("flannel's network; every node gets a subnet of it."),
      podSubnetLength: z.number().int().min(16).max(28).default(24),
      flannelBackend: z.enum(["vxlan", "udp", "host-gw"]).default("vxlan"),
      serviceNetwork: cidr,
      dnsIp: ipv4.describe("kube-dns service address, inside serviceNetwork."),
      domain: z
        .string()
        .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/)
        .max(253)
        .default("cluster.local"),
      schedulableMaster: z
        .boolean()
        .default(false)
        .describe("Register the control-plane node as a schedulable node (seed 000)."),
    }),
    addons: z
      .array(z.enum(["kube-dns", "dashboard"]))
      .default([])
      .refine((a) => new Set(a).size === a.length, "addons must not repeat"),
    registry: z
      .strictObject({
        server: z.string().regex(HOSTNAME, "must be a registry host[:port]"),
        username: z.string().regex(/^[A-Za-z0-9._@-]{1,128}$/, "must be a plain user name"),
        passwordEnv: z
          .string()
          .regex(ENV_NAME, "must be an environment variable name such as REGISTRY_PASSWORD")
          .optional()
          .describe("Read the password from this environment variable of the host."),
        passwordFile: z
          .string()
          .regex(PLAIN_PATH, "must be a plain path")
          .optional()
          .describe("Or from this file on the host, relative to the lab file."),
        pullSecret: z
          .union([z.boolean(), z.array(dnsLabel).min(1).max(20)])
          .default(false)
          .describe(
            "Also an image pull secret (kubernetes.io/dockerconfigjson, named k8slab-registry) attached to the default service account: true for the default namespace, or a list of namespaces.",
          ),
      })
      .refine((r) => (r.passwordEnv === undefined) !== (r.passwordFile === undefined), {
        message: "give exactly one of passwordEnv or passwordFile",
      })
      .optional()
      .describe(
        "A private registry's login (seed 003), never the password itself: it is read on the host when the nodes are provisioned and written for Docker on each node (/root/.docker/config.json).",
      ),
    artifacts: z
      .record(z.string().regex(/^[a-z][a-z0-9-]{0,40}$/, "must be a plain artifact name"), artifact)
      .default({})
      .describe("What to download once on the host, verify and serve to the VMs."),
    pki: z
      .strictObject({
        validityDays: z.number().int().min(1).max(3650).default(365),
      })
      .default({ validityDays: 365 }),
  })
  .describe("A k8slab lab file.");

export type Lab = z.infer<typeof labSchema>;
export type LabInput = z.input<typeof labSchema>;
export type LabNode = Lab["nodes"][number];
export type LabArtifact = Lab["artifacts"][string];
