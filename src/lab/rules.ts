import { nodeArch, nodeFetches, SERVED_NAME_MAX, servedName } from "./artifact-variants.js";
import { ARCHES, type Lab, type Role } from "./schema.js";
import { ruleError, ruleWarning, type RuleProblem } from "./problems.js";
import type { Rule } from "./validate-yaml.js";
import { ADDON_IMAGES, cachedImages } from "../plan/plan.js";
import {
  broadcast,
  contains,
  formatCidr,
  hasHostBits,
  ipToInt,
  nthAddress,
  overlaps,
  parseCidr,
  type Cidr,
} from "../util/ipv4.js";

/** VirtualBox 6.1.28+ allows host-only networks only here unless /etc/vbox/networks.conf says so. */
export const VBOX_DEFAULT_RANGE = "192.168.56.0/21";
/** Docker's default bridge network, which would shadow any overlapping lab network. */
export const DOCKER_DEFAULT = "172.17.0.0/16";
/** Vagrant's NAT network on VirtualBox: eth0 is 10.0.2.15 on every VM. */
export const VAGRANT_NAT = "10.0.2.0/24";

/** Memory (MB) below which a role is known to struggle. */
export const MIN_MEMORY: Record<Role, number> = { etcd: 512, "control-plane": 1024, worker: 768 };

const err = ruleError;
const warn = ruleWarning;

/**
 * Rules that span several fields. Each reads only sections the schema has shaped; when the
 * schema fails elsewhere, a rule that reads a malformed section is skipped (see validateYamlText).
 */
export const LAB_RULES: readonly Rule<Lab>[] = [
  checkCidrShapes,
  checkNodes,
  checkNetworks,
  checkServices,
  checkRoles,
  checkArtifacts,
  checkAddonImages,
  checkImageSources,
  checkSsh,
];

function checkCidrShapes(lab: Lab): RuleProblem[] {
  const fields: [string, string][] = [
    ["network.hostOnly", lab.network.hostOnly],
    ["cluster.podNetwork", lab.cluster.podNetwork],
    ["cluster.serviceNetwork", lab.cluster.serviceNetwork],
  ];
  return fields
    .filter(([, value]) => hasHostBits(value))
    .map(([path, value]) =>
      err(
        path,
        `${value} has host bits set`,
        `write the network address: ${formatCidr(parseCidr(value))}`,
      ),
    );
}

function checkNodes(lab: Lab): RuleProblem[] {
  const problems: RuleProblem[] = [];
  const hostOnly = parseCidr(lab.network.hostOnly);
  const gateway = nthAddress(hostOnly, 1);
  const byName = new Map<string, number>();
  const byIp = new Map<string, number>();
  lab.nodes.forEach((node, i) => {
    const seenName = byName.get(node.name);
    if (seenName !== undefined) {
      problems.push(
        err(`nodes.${i}.name`, `${node.name} is already the name of nodes.${seenName}`),
      );
    } else byName.set(node.name, i);

    const seenIp = byIp.get(node.ip);
    if (seenIp !== undefined) {
      problems.push(err(`nodes.${i}.ip`, `${node.ip} is used by ${lab.nodes[seenIp]!.name}`));
    } else byIp.set(node.ip, i);

    if (!contains(hostOnly, node.ip)) {
      problems.push(
        err(`nodes.${i}.ip`, `${node.ip} is outside the host-only network ${lab.network.hostOnly}`),
      );
    } else if (ipToInt(node.ip) === hostOnly.network) {
      problems.push(
        err(`nodes.${i}.ip`, `${node.ip} is the network address of ${lab.network.hostOnly}`),
      );
    } else if (ipToInt(node.ip) === broadcast(hostOnly)) {
      problems.push(
        err(`nodes.${i}.ip`, `${node.ip} is the broadcast address of ${lab.network.hostOnly}`),
      );
    } else if (node.ip === gateway && lab.provider.name !== "ssh") {
      problems.push(
        err(
          `nodes.${i}.ip`,
          `${node.ip} is the host's own address on the host-only network`,
          "use .2 or above",
        ),
      );
    }

    const need = Math.max(...node.roles.map((r) => MIN_MEMORY[r]));
    if (node.memory < need) {
      problems.push(
        warn(
          `nodes.${i}.memory`,
          `${node.memory} MB is below the ${need} MB that ${node.roles.join(" + ")} needs; expect swapping or OOM kills`,
        ),
      );
    }
  });
  return problems;
}

function checkNetworks(lab: Lab): RuleProblem[] {
  const problems: RuleProblem[] = [];
  const nets: [string, Cidr][] = [
    ["cluster.podNetwork", parseCidr(lab.cluster.podNetwork)],
    ["cluster.serviceNetwork", parseCidr(lab.cluster.serviceNetwork)],
    ["network.hostOnly", parseCidr(lab.network.hostOnly)],
  ];
  for (let i = 0; i < nets.length; i++) {
    for (let j = i + 1; j < nets.length; j++) {
      const [pa, a] = nets[i]!;
      const [pb, b] = nets[j]!;
      if (overlaps(a, b)) {
        problems.push(err(pa, `${formatCidr(a)} overlaps ${pb} ${formatCidr(b)}`));
      }
    }
  }
  const docker = parseCidr(DOCKER_DEFAULT);
  const nat = parseCidr(VAGRANT_NAT);
  for (const [path, net] of nets) {
    if (overlaps(net, docker)) {
      problems.push(
        err(path, `${formatCidr(net)} overlaps Docker's default bridge network ${DOCKER_DEFAULT}`),
      );
    }
    if (overlaps(net, nat)) {
      problems.push(
        err(
          path,
          `${formatCidr(net)} overlaps Vagrant's NAT network ${VAGRANT_NAT} (eth0 of every VM)`,
        ),
      );
    }
  }
  const hostOnly = parseCidr(lab.network.hostOnly);
  const vbox = parseCidr(VBOX_DEFAULT_RANGE);
  if (
    lab.provider.name === "virtualbox" &&
    !(overlaps(hostOnly, vbox) && hostOnly.prefix >= vbox.prefix)
  ) {
    problems.push(
      warn(
        "network.hostOnly",
        `${lab.network.hostOnly} is outside VirtualBox's default host-only range ${VBOX_DEFAULT_RANGE}; VirtualBox 6.1.28+ refuses it`,
        `use an address inside ${VBOX_DEFAULT_RANGE}, or allow the range in /etc/vbox/networks.conf (a line such as "* ${lab.network.hostOnly}")`,
      ),
    );
  }
  const pod = parseCidr(lab.cluster.podNetwork);
  const len = lab.cluster.podSubnetLength;
  if (len <= pod.prefix) {
    problems.push(
      err(
        "cluster.podSubnetLength",
        `/${len} per node must be longer than the pod network's /${pod.prefix}`,
      ),
    );
  } else if (2 ** (len - pod.prefix) < lab.nodes.length) {
    problems.push(
      err(
        "cluster.podSubnetLength",
        `${lab.cluster.podNetwork} holds only ${2 ** (len - pod.prefix)} subnets of /${len}, but the lab has ${lab.nodes.length} nodes`,
        "use a shorter subnet length or a larger pod network",
      ),
    );
  }
  return problems;
}

function checkServices(lab: Lab): RuleProblem[] {
  const problems: RuleProblem[] = [];
  const svc = parseCidr(lab.cluster.serviceNetwork);
  if (svc.prefix > 29) {
    problems.push(
      err("cluster.serviceNetwork", `/${svc.prefix} is too small for services; use /24 or larger`),
    );
    return problems;
  }
  const apiIp = nthAddress(svc, 1);
  if (!contains(svc, lab.cluster.dnsIp)) {
    problems.push(
      err(
        "cluster.dnsIp",
        `${lab.cluster.dnsIp} is outside the service network ${lab.cluster.serviceNetwork}`,
        `use an address such as ${nthAddress(svc, 10)}`,
      ),
    );
  } else if (lab.cluster.dnsIp === apiIp) {
    problems.push(
      err(
        "cluster.dnsIp",
        `${lab.cluster.dnsIp} is the API server's service address (the first of ${lab.cluster.serviceNetwork})`,
        `use ${nthAddress(svc, 10)}`,
      ),
    );
  } else if (
    ipToInt(lab.cluster.dnsIp) === svc.network ||
    ipToInt(lab.cluster.dnsIp) === broadcast(svc)
  ) {
    problems.push(
      err(
        "cluster.dnsIp",
        `${lab.cluster.dnsIp} is not a usable address of ${lab.cluster.serviceNetwork}`,
      ),
    );
  }
  return problems;
}

function checkRoles(lab: Lab): RuleProblem[] {
  const problems: RuleProblem[] = [];
  const withRole = (r: Role) => lab.nodes.filter((n) => n.roles.includes(r));
  const cp = withRole("control-plane");
  if (cp.length === 0) {
    problems.push(
      err("nodes", "no node has the control-plane role", "add control-plane to one node's roles"),
    );
  } else if (cp.length > 1) {
    problems.push(
      err(
        "nodes",
        `only one control-plane node is supported, found ${cp.map((n) => n.name).join(", ")}`,
      ),
    );
  }
  const etcd = withRole("etcd");
  if (etcd.length === 0) {
    problems.push(
      err("nodes", "no node has the etcd role", "add etcd to the roles of one or three nodes"),
    );
  } else if (etcd.length % 2 === 0) {
    problems.push(
      warn(
        "nodes",
        `${etcd.length} etcd members tolerate no more failures than ${etcd.length - 1}; an odd number is better for quorum`,
      ),
    );
  }
  const kubelets = lab.nodes.filter(
    (n) =>
      n.roles.includes("worker") ||
      (lab.cluster.schedulableMaster && n.roles.includes("control-plane")),
  );
  if (kubelets.length === 0) {
    problems.push(
      err(
        "nodes",
        "no node can run pods: give a node the worker role or set cluster.schedulableMaster",
      ),
    );
  }
  return problems;
}

function checkArtifacts(lab: Lab): RuleProblem[] {
  const seen = new Map<string, string>();
  const problems: RuleProblem[] = [];
  for (const [name, a] of Object.entries(lab.artifacts)) {
    const files: [string, string][] = a.urls
      ? Object.entries(a.urls).map(([arch, v]) => [`artifacts.${name}.urls.${arch}.url`, v.url])
      : a.url !== undefined
        ? [[`artifacts.${name}.url`, a.url]]
        : [];
    for (const [path, url] of files) {
      const other = seen.get(url);
      if (other !== undefined) problems.push(err(path, `the same URL as ${other}`));
      else seen.set(url, path.replace(/\.url$/, ""));
    }
  }
  return [...problems, ...checkArtifactArches(lab)];
}

/** Every node gets its architecture's file of a per-architecture artifact; served names are unique. */
function checkArtifactArches(lab: Lab): RuleProblem[] {
  const problems: RuleProblem[] = [];
  /** Files of per-architecture artifacts, by served name: "flannel-arm" -> "flannel's arm file". */
  const served = new Map<string, string>();
  for (const [name, a] of Object.entries(lab.artifacts)) {
    for (const arch of ARCHES) {
      if (!a.urls?.[arch]) continue;
      const file = servedName(name, a, arch);
      if (file.length > SERVED_NAME_MAX) {
        problems.push(
          err(
            `artifacts.${name}`,
            `with urls, the name must leave room for -${arch}: at most ${SERVED_NAME_MAX - arch.length - 1} characters`,
          ),
        );
      }
      served.set(file, `artifacts.${name}'s ${arch} file`);
    }
  }
  for (const [name, a] of Object.entries(lab.artifacts)) {
    const other = served.get(name);
    if (!a.urls && other !== undefined) {
      problems.push(
        err(`artifacts.${name}`, `the host serves ${other} as ${name} too`, "rename this artifact"),
      );
    }
  }
  lab.nodes.forEach((node, i) => {
    const arch = nodeArch(node);
    for (const [name, a] of Object.entries(lab.artifacts)) {
      if (a.urls && !a.urls[arch] && nodeFetches(node, a)) {
        problems.push(
          err(
            `artifacts.${name}.urls`,
            `node ${node.name} is ${arch}, and artifacts.${name} has no ${arch} url`,
            `add urls.${arch} to artifacts.${name}, or set nodes.${i}.arch`,
          ),
        );
      }
    }
  });
  return problems;
}

/** Names the lab's images are served under are not free for artifacts; hyperkube needs its program. */
function checkImageSources(lab: Lab): RuleProblem[] {
  const problems: RuleProblem[] = [];
  const images = new Set(cachedImages(lab).map((a) => a.name));
  for (const name of Object.keys(lab.artifacts).filter((n) => images.has(n))) {
    problems.push(
      err(
        `artifacts.${name}`,
        `the name ${name} is the one the host serves an image under`,
        "name the artifact otherwise",
      ),
    );
  }
  // Programs the control-plane node gets: archive members it installs, binaries by their name.
  const masters = lab.nodes.filter((n) => n.roles.includes("control-plane"));
  const onMaster = Object.entries(lab.artifacts).filter(([, a]) =>
    masters.some((n) => nodeFetches(n, a)),
  );
  const programs = onMaster.flatMap(([name, a]) =>
    a.kind === "binary" ? [name] : Object.values(a.install),
  );
  if (lab.images.build.includes("hyperkube") && !programs.includes("hyperkube")) {
    problems.push(
      warn(
        "images.build",
        "the control plane's hyperkube image is built from a hyperkube program, and no artifact installs one on the control-plane node: the docker phase looks for hyperkube on the master's PATH and stops without it",
        "install it from the Kubernetes server archive (install: kubernetes/server/bin/hyperkube: hyperkube), or remove hyperkube from images.build to get the image from the host cache",
      ),
    );
  }
  return problems;
}

function checkAddonImages(lab: Lab): RuleProblem[] {
  return lab.addons.flatMap((addon) =>
    ADDON_IMAGES[addon]
      .filter((key) => !lab.images[key])
      .map((key) => err("images", `the ${addon} addon needs images.${key}`)),
  );
}

/**
 * An SSH lab says how to log in (`ssh:`); a Vagrant lab has no use for SSH settings, and saying
 * so beats ignoring them (a lab file that sets them expects them to matter).
 */
function checkSsh(lab: Lab): RuleProblem[] {
  if (lab.provider.name === "ssh") {
    return lab.ssh
      ? []
      : [
          err(
            "provider.name",
            "a lab whose provider is ssh needs `ssh:` (at least the login user)",
            "add ssh: { user: <login user> } to the lab file",
          ),
        ];
  }
  const problems: RuleProblem[] = [];
  const vagrant = `they apply only to provider.name: ssh (the ${lab.provider.name} VMs are reached by Vagrant)`;
  if (lab.ssh) problems.push(err("ssh", `ssh settings in a ${lab.provider.name} lab: ${vagrant}`));
  lab.nodes.forEach((node, i) => {
    if (node.ssh) problems.push(err(`nodes.${i}.ssh`, `ssh settings on a node: ${vagrant}`));
  });
  return problems;
}
