import { stringify } from "yaml";
import { validateLabText, type LoadedLab } from "../lab/load.js";
import type { RuleProblem } from "../lab/problems.js";
import { InvalidFileError, ruleError, ruleWarning } from "../lab/problems.js";
import type { Arch, LabInput, Role } from "../lab/schema.js";
import {
  boardsOf,
  loadPiLab,
  type PiArtifactUrls,
  type PiKubernetes,
  type PiLab,
} from "./pi-lab.js";

/**
 * Seed 002's Raspberry Pi cluster as a lab `create` accepts: the boards are machines that
 * already run, so the lab's provider is ssh (login: the Pi lab's user), its nodes are the boards
 * (hostname, address), its network is the boards' LAN, and its artifacts are the upstream
 * release archives for the boards' architecture. Pure: it reads nothing and writes nothing.
 */

/** The lab-level `ssh:` and `provider: ssh` of the SSH provider (its schema lives in schema.ts). */
export type PiLabAsLab = LabInput & {
  provider: { name: "ssh" };
  ssh: { user: string; port: number };
};

export interface PiConversion {
  /** The lab file it amounts to (validate it with the lab schema); undefined on errors. */
  lab?: PiLabAsLab;
  problems: RuleProblem[];
}

type BoardArch = Extract<Arch, "arm" | "arm64">;

/**
 * The boards' architecture: the lab's `kubernetes.arch`, else the release's. Every HypriotOS
 * v1.x release (hypriot/image-builder-rpi) is a 32-bit armhf system, whatever the board's CPU.
 */
export function piBoardArch(lab: PiLab): BoardArch {
  return lab.kubernetes?.arch ?? "arm";
}

/** Upstream's name for an architecture in each project's release files. */
const DOCKER_ARCH: Record<BoardArch, string> = { arm: "armhf", arm64: "aarch64" };

/**
 * Upstream release archives for a board architecture. Kubernetes publishes server archives for
 * arm and arm64; flannel both; etcd arm64 from v3.2.1 only and no 32-bit ARM build at all.
 */
export function upstreamUrls(
  k: Pick<PiKubernetes, "version" | "etcd" | "flannel">,
  arch: BoardArch,
): { kubernetes: string; etcd?: string; flannel: string } {
  const etcd = `v${k.etcd.replace(/^v/, "")}`;
  const flannel = `v${k.flannel.replace(/^v/, "")}`;
  const kube = `v${k.version.replace(/^v/, "")}`;
  return {
    kubernetes: `https://dl.k8s.io/${kube}/kubernetes-server-linux-${arch}.tar.gz`,
    ...(arch === "arm64"
      ? {
          etcd: `https://github.com/coreos/etcd/releases/download/${etcd}/etcd-${etcd}-linux-${arch}.tar.gz`,
        }
      : {}),
    flannel: `https://github.com/coreos/flannel/releases/download/${flannel}/flannel-${flannel}-linux-${arch}.tar.gz`,
  };
}

const DEFAULTS: PiKubernetes = {
  version: "v1.9.3",
  etcd: "v3.2.18",
  flannel: "v0.10.0",
  docker: "image",
  artifacts: {},
  podNetwork: "10.244.0.0/16",
  serviceNetwork: "10.32.0.0/24",
  schedulableMaster: false,
};

type FileSpec = { url: string; sha256?: string | undefined };

function pick(
  given: PiArtifactUrls | undefined,
  arch: BoardArch,
  upstream: string | undefined,
): FileSpec | undefined {
  const file = given?.[arch];
  if (file) return file.sha256 ? { url: file.url, sha256: file.sha256 } : { url: file.url };
  return upstream === undefined ? undefined : { url: upstream };
}

/** Seed 002: the master runs etcd and the control plane, the nodes the kubelet (and etcd). */
function rolesOf(board: "master" | "node", etcd: boolean, alone: boolean): Role[] {
  if (board === "master") return ["etcd", "control-plane", ...(alone ? ["worker" as const] : [])];
  return [...(etcd ? ["etcd" as const] : []), "worker"];
}

/** Turn a valid Pi lab into the lab file of the same cluster on the boards, over SSH. */
export function piToLab(pi: PiLab): PiConversion {
  const k = pi.kubernetes ?? DEFAULTS;
  const arch = piBoardArch(pi);
  const problems: RuleProblem[] = [];
  const boards = boardsOf(pi);
  const paths = ["master", ...pi.nodes.map((_, i) => `nodes.${i}`)];
  boards.forEach((b, i) => {
    if (b.ip === undefined) {
      problems.push(
        ruleError(
          `${paths[i] ?? ""}.ip`,
          `${b.hostname} has no static ip: k8slab's certificates and etcd need each board's address`,
          `give ${paths[i] ?? ""} an ip inside network.cidr`,
        ),
      );
    }
  });
  if (!pi.network.cidr) {
    problems.push(
      ruleError("network.cidr", "creating the cluster needs the boards' LAN (network.cidr)"),
    );
  }
  if (problems.some((p) => p.severity === "error")) return { problems };

  const upstream = upstreamUrls(k, arch);
  const artifacts: NonNullable<LabInput["artifacts"]> = {};
  const kubeFile = pick(k.artifacts.kubernetes, arch, upstream.kubernetes);
  if (kubeFile) {
    artifacts["kubernetes-server"] = {
      urls: { [arch]: kubeFile },
      install: {
        "kubernetes/server/bin/hyperkube": "hyperkube",
        "kubernetes/server/bin/kubelet": "kubelet",
        "kubernetes/server/bin/kube-proxy": "kube-proxy",
        "kubernetes/server/bin/kubectl": "kubectl",
      },
    };
  }
  const etcdFile = pick(k.artifacts.etcd, arch, upstream.etcd);
  if (etcdFile) {
    const dir =
      etcdFile.url
        .split("/")
        .pop()
        ?.replace(/\.tar\.gz$/, "") ?? "";
    artifacts.etcd = {
      urls: { [arch]: etcdFile },
      roles: ["etcd"],
      install: { [`${dir}/etcd`]: "etcd", [`${dir}/etcdctl`]: "etcdctl" },
    };
  } else {
    problems.push(
      ruleWarning(
        "kubernetes.artifacts.etcd",
        `etcd publishes no ${arch} build: the boards' own etcd and etcdctl are used (install them on the boards)`,
        `or give kubernetes.artifacts.etcd.${arch}: { url: ... } (an archive with etcd-<version>-linux-${arch}/etcd)`,
      ),
    );
  }
  const flannelFile = pick(k.artifacts.flannel, arch, upstream.flannel);
  if (flannelFile) {
    artifacts.flannel = { urls: { [arch]: flannelFile }, install: { flanneld: "flanneld" } };
  }
  if (k.docker !== "image") {
    const dockerFile = pick(k.docker, arch, undefined);
    if (!dockerFile) {
      problems.push(
        ruleError(
          "kubernetes.docker",
          `no Docker archive for ${arch} boards`,
          `give kubernetes.docker.${arch}: { url: https://download.docker.com/linux/static/stable/${DOCKER_ARCH[arch]}/docker-<version>.tgz }, or docker: image`,
        ),
      );
      return { problems };
    }
    artifacts.docker = {
      urls: { [arch]: dockerFile },
      install: Object.fromEntries(
        [
          "docker",
          "dockerd",
          "docker-containerd",
          "docker-containerd-shim",
          "docker-containerd-ctr",
          "docker-runc",
          "docker-init",
          "docker-proxy",
        ].map((p) => [`docker/${p}`, p]),
      ),
    };
  }

  // etcd on an odd number of boards: the master and the first two nodes (seed 004's three).
  const etcdBoards = pi.nodes.length >= 2 ? 3 : 1;
  const nodes = boards.map((b, i) => ({
    name: b.hostname,
    ip: b.ip ?? "",
    memory: 1024,
    cpus: 4,
    arch,
    roles: rolesOf(b.role, i < etcdBoards, pi.nodes.length === 0),
  }));
  const service = k.serviceNetwork.split("/")[0]!.split(".").map(Number);
  const dnsIp = [service[0], service[1], service[2], (service[3] ?? 0) + 10].join(".");
  const lab: PiLabAsLab = {
    name: pi.name,
    description: `${pi.description ?? pi.name}, on the boards over SSH (converted from the Pi lab)`
      .replace(/[\n\r]/g, " ")
      .slice(0, 500),
    provider: { name: "ssh" },
    ssh: { user: pi.user.name, port: 22 },
    network: { hostOnly: pi.network.cidr ?? "" },
    nodes,
    versions: {
      kubernetes: k.version,
      etcd: k.etcd,
      flannel: k.flannel,
      // The line Kubernetes 1.9 supports (informational: docker: image runs the image's own).
      docker: "17.03",
      kubeDns: "1.14.7",
      dashboard: "v1.8.0",
    },
    images: {
      hyperkube: `gcr.io/google_containers/hyperkube-${arch}:${k.version}`,
      pause: `gcr.io/google_containers/pause-${arch}:3.1`,
      // Made on the boards from their own programs: the host cache pulls images for
      // linux/amd64 only, and a board runs arm or arm64.
      build: ["hyperkube", "pause"],
    },
    cluster: {
      podNetwork: k.podNetwork,
      serviceNetwork: k.serviceNetwork,
      dnsIp,
      schedulableMaster: k.schedulableMaster || pi.nodes.length === 0,
    },
    addons: [],
    artifacts,
  };
  return { lab, problems };
}

/**
 * Load a Pi lab file and give the lab it amounts to, validated like any lab file (problems of
 * the conversion point at the Pi lab's fields; those of the lab it became say so).
 */
export async function loadPiLabAsLab(ref: string, options: { cwd: string }): Promise<LoadedLab> {
  const pi = await loadPiLab(ref, options);
  const { lab, problems } = piToLab(pi.lab);
  const own = problems.map((p) => ({ ...p, file: pi.file }));
  if (!lab) throw new InvalidFileError(pi.file, "Pi cluster lab for create", own, hintFor(ref));
  const asLab = `${pi.file} (as a lab)`;
  const checked = validateLabText(asLab, stringify(lab));
  if (!checked.lab) {
    throw new InvalidFileError(
      pi.file,
      "Pi cluster lab for create",
      [...own, ...checked.problems],
      hintFor(ref),
    );
  }
  return {
    lab: checked.lab,
    file: pi.file,
    path: pi.path,
    warnings: [...pi.warnings, ...own, ...checked.problems],
  };
}

function hintFor(ref: string): string {
  return `fix the Pi lab's fields above (its kubernetes: section says what is installed), then run: k8slab validate ${ref}`;
}
