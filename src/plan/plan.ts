import { nodeArch, nodeFetches, variantFor } from "../lab/artifact-variants.js";
import type { VagrantProviderName } from "../lab/providers.js";
import { pullSecretNamespaces } from "../registry/credentials.js";
import type { Arch, BoxSpec, Lab, LabArtifact, LabNode, Role } from "../lab/schema.js";
import type { PkiTopology } from "../pki/topology.js";
import { nthAddress, parseCidr } from "../util/ipv4.js";

/** The provisioning phases, in the order they run on a node. */
export const PHASES = [
  "base",
  "pki",
  "artifacts",
  "etcd",
  "flannel-config",
  "flannel",
  "docker",
  "kubelet",
  "control-plane",
  "kube-proxy",
  "addons",
] as const;
export type Phase = (typeof PHASES)[number];

/** Ports the lab uses. */
export const PORTS = { etcdClient: 2379, etcdPeer: 2380, apiServer: 6443 } as const;

export interface NodePlan extends LabNode {
  /** The node's architecture (the lab's, or amd64). */
  arch: Arch;
  /** Phases that run on this node, in order. */
  phases: Phase[];
  isMaster: boolean;
  isEtcd: boolean;
  /**
   * Pods may be scheduled here: a worker, or the control-plane node when the lab says so. Every
   * node registers with the API server; one that is not schedulable carries the master taint.
   */
  schedulable: boolean;
  artifacts: PlannedArtifact[];
}

/** Everything derived from a lab that templates, PKI and probes need. */
export interface LabPlan {
  lab: Lab;
  master: NodePlan;
  nodes: NodePlan[];
  etcdMembers: NodePlan[];
  /** etcd's --initial-cluster value: master=https://192.168.56.165:2380,... */
  etcdInitialCluster: string;
  /** Comma-separated client URLs of every etcd member. */
  etcdEndpoints: string;
  apiServiceIp: string;
  apiServerUrl: string;
  /** Where a node finds the files of its phase on the VM. */
  paths: typeof VM_PATHS;
  /** The names Docker knows the cluster's images by: the lab's references without a digest. */
  images: ImageNames;
}

export type ImageNames = { [K in ImageKey]: Lab["images"][K] };

/** Fixed locations inside the VMs. */
export const VM_PATHS = {
  pkiUpload: "/tmp/k8slab-pki",
  /** Where an SSH lab's node receives its phase scripts (Vagrant uses /tmp/vagrant-shell). */
  provisionUpload: "/tmp/k8slab-provision",
  pki: "/etc/kubernetes/pki",
  manifests: "/etc/kubernetes/manifests",
  kubeconfigs: "/etc/kubernetes",
  etcdData: "/var/lib/etcd",
  flannelSubnetEnv: "/run/flannel/subnet.env",
  flannelEtcdPrefix: "/coreos.com/network",
  stateDir: "/var/lib/k8slab",
  artifactCache: "/var/cache/k8slab",
  bin: "/opt/k8slab/bin",
  /** Wrappers that adapt newer host programs to what Kubernetes 1.9 passes them. */
  compat: "/opt/k8slab/compat",
  files: "/opt/k8slab/files",
} as const;

/** The box a provider boots: the lab's one box, or the one it names for that provider. */
export function boxFor(lab: Lab, provider: VagrantProviderName): BoxSpec | undefined {
  return "name" in lab.box ? lab.box : lab.box[provider];
}

function has(node: LabNode, role: Role): boolean {
  return node.roles.includes(role);
}

function phasesFor(node: LabNode, lab: Lab): Phase[] {
  const isMaster = has(node, "control-plane");
  return PHASES.filter((phase) => {
    switch (phase) {
      case "etcd":
        return has(node, "etcd");
      case "control-plane":
      case "flannel-config":
        return isMaster;
      case "addons":
        return isMaster && (lab.addons.length > 0 || pullSecretNamespaces(lab.registry).length > 0);
      case "artifacts":
        return artifactsFor(node, lab).length > 0;
      default:
        return true;
    }
  });
}

/**
 * An artifact as one node gets it: its file for the node's architecture (`url`, `sha256`),
 * fetched from the host as `served` and kept on the node under `name`.
 */
export type PlannedArtifact = Omit<LabArtifact, "url" | "urls" | "sha256"> & {
  name: string;
  served: string;
  url: string;
  sha256?: string | undefined;
  /** For an image from the host cache: the name Docker knows it by once loaded (url: docker://<reference>). */
  image?: string;
};

/** The references of the cluster's images in the lab file. */
const IMAGE_KEYS = ["hyperkube", "pause", "kubeDns", "dnsmasq", "dnsSidecar", "dashboard"] as const;
export type ImageKey = (typeof IMAGE_KEYS)[number];

/** The images each addon's manifest runs. */
export const ADDON_IMAGES = {
  "kube-dns": ["kubeDns", "dnsmasq", "dnsSidecar"],
  dashboard: ["dashboard"],
} as const satisfies Record<Lab["addons"][number], readonly ImageKey[]>;

/** The name Docker gives an image loaded from a docker-archive: the reference without its digest. */
export function imageName(ref: string): string {
  return ref.replace(/@sha256:[a-f0-9]{64}$/, "");
}

/** What the host serves an image's archive as: image-pause, image-kube-dns, image-preload-web. */
export function imageArtifactName(key: ImageKey | { preload: string }): string {
  if (typeof key === "object") return `image-preload-${key.preload}`;
  return `image-${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

const IMAGE_URL = "docker://";

/** The image reference a cached image's artifact stands for (its url is docker://<reference>). */
export function imageReference(artifact: PlannedArtifact): string {
  return artifact.url.slice(IMAGE_URL.length);
}

/**
 * The images the nodes get from the host cache, as artifacts of kind image: pause (unless the
 * nodes build it), hyperkube for the control-plane node (unless it is built there from the
 * hyperkube program), the images of the lab's addons, and the lab's preloaded images.
 */
export function cachedImages(lab: Lab): PlannedArtifact[] {
  const entry = (name: string, ref: string, roles?: Role[]): PlannedArtifact => ({
    name,
    served: name,
    url: `${IMAGE_URL}${ref}`,
    image: imageName(ref),
    kind: "image",
    install: {},
    ...(roles ? { roles } : {}),
  });
  const keys: ImageKey[] = [
    ...(lab.images.build.includes("pause") ? [] : (["pause"] as const)),
    ...lab.addons.flatMap((addon) => ADDON_IMAGES[addon]),
  ];
  return [
    ...(lab.images.build.includes("hyperkube")
      ? []
      : [entry(imageArtifactName("hyperkube"), lab.images.hyperkube, ["control-plane"])]),
    ...keys.flatMap((key) => {
      const ref = lab.images[key];
      return ref ? [entry(imageArtifactName(key), ref)] : [];
    }),
    ...Object.entries(lab.images.preload).map(([name, ref]) =>
      entry(imageArtifactName({ preload: name }), ref),
    ),
  ];
}

/**
 * The artifacts a node fetches: those without a role filter, and those for one of its roles, in
 * the variant for its architecture (validation makes sure there is one); then the images it
 * loads from the host cache.
 */
export function artifactsFor(node: LabNode, lab: Lab): PlannedArtifact[] {
  const files = Object.entries(lab.artifacts).flatMap(([name, a]): PlannedArtifact[] => {
    if (!nodeFetches(node, a)) return [];
    const variant = variantFor(name, a, nodeArch(node));
    if (!variant) return [];
    return [
      {
        kind: a.kind,
        install: a.install,
        ...(a.roles ? { roles: a.roles } : {}),
        name,
        served: variant.name,
        url: variant.url,
        sha256: variant.sha256,
      },
    ];
  });
  return [...files, ...cachedImages(lab).filter((a) => nodeFetches(node, a))];
}

/** Derive the plan. The lab must already be valid (exactly one control-plane node). */
export function planLab(lab: Lab): LabPlan {
  const nodes: NodePlan[] = lab.nodes.map((node) => {
    const isMaster = has(node, "control-plane");
    const schedulable = has(node, "worker") || (isMaster && lab.cluster.schedulableMaster);
    return {
      ...node,
      arch: nodeArch(node),
      isMaster,
      isEtcd: has(node, "etcd"),
      schedulable,
      artifacts: artifactsFor(node, lab),
      phases: phasesFor(node, lab),
    };
  });
  const master = nodes.find((n) => n.isMaster);
  if (!master) throw new Error("planLab: the lab has no control-plane node (validation missed it)");
  const etcdMembers = nodes.filter((n) => n.isEtcd);
  return {
    lab,
    master,
    nodes,
    etcdMembers,
    etcdInitialCluster: etcdMembers
      .map((n) => `${n.name}=https://${n.ip}:${PORTS.etcdPeer}`)
      .join(","),
    etcdEndpoints: etcdMembers.map((n) => `https://${n.ip}:${PORTS.etcdClient}`).join(","),
    apiServiceIp: nthAddress(parseCidr(lab.cluster.serviceNetwork), 1),
    apiServerUrl: `https://${master.ip}:${PORTS.apiServer}`,
    paths: VM_PATHS,
    images: Object.fromEntries(
      IMAGE_KEYS.flatMap((key) => {
        const ref = lab.images[key];
        return ref ? [[key, imageName(ref)]] : [];
      }),
    ) as ImageNames,
  };
}

export function pkiTopology(plan: LabPlan): PkiTopology {
  return {
    labName: plan.lab.name,
    clusterDomain: plan.lab.cluster.domain,
    apiServiceIp: plan.apiServiceIp,
    apiServerUrl: plan.apiServerUrl,
    nodes: plan.nodes.map((n) => ({ name: n.name, ip: n.ip, roles: n.roles })),
    validityDays: plan.lab.pki.validityDays,
  };
}
