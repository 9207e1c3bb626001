import { isIPv4 } from "node:net";
import { K8slabError } from "../errors.js";

export type NodeRole = "etcd" | "control-plane" | "worker";

export interface PkiNode {
  name: string;
  ip: string;
  roles: readonly NodeRole[];
}

/** What the PKI needs to know about a lab; derived from the lab file by src/plan. */
export interface PkiTopology {
  /** Also the kubeconfig cluster and context name. */
  labName: string;
  /** e.g. "cluster.local" */
  clusterDomain: string;
  /** First address of the service CIDR, e.g. "10.0.0.1". */
  apiServiceIp: string;
  /** e.g. "https://192.168.56.165:6443" (the master's private IP). */
  apiServerUrl: string;
  /** Every node; the control-plane node is the master. */
  nodes: readonly PkiNode[];
  /** Certificate validity in days (the lab default is 365). */
  validityDays: number;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$/;

function invalid(message: string): K8slabError {
  return new K8slabError(`invalid PKI topology: ${message}`, {
    hint: "fix the lab file, then run `k8slab validate` to check it",
  });
}

export function hasRole(node: PkiNode, role: NodeRole): boolean {
  return node.roles.includes(role);
}

export function etcdMembers(topology: PkiTopology): PkiNode[] {
  return topology.nodes.filter((n) => hasRole(n, "etcd"));
}

/** The single control-plane node (validated by `validateTopology`). */
export function masterNode(topology: PkiTopology): PkiNode {
  const master = topology.nodes.find((n) => hasRole(n, "control-plane"));
  if (master === undefined) throw invalid("no node has the control-plane role");
  return master;
}

/**
 * Check everything the PKI relies on: node names become file names and DNS SANs, IPs become IP
 * SANs, and exactly one node runs the control plane.
 */
export function validateTopology(topology: PkiTopology): void {
  if (!DNS_LABEL.test(topology.labName)) {
    throw invalid(`lab name "${topology.labName}" must be a lowercase DNS label`);
  }
  if (!DNS_NAME.test(topology.clusterDomain)) {
    throw invalid(`cluster domain "${topology.clusterDomain}" is not a DNS name`);
  }
  if (!isIPv4(topology.apiServiceIp)) {
    throw invalid(`API service IP "${topology.apiServiceIp}" is not an IPv4 address`);
  }
  let url: URL;
  try {
    url = new URL(topology.apiServerUrl);
  } catch {
    throw invalid(`API server URL "${topology.apiServerUrl}" is not a URL`);
  }
  if (url.protocol !== "https:") {
    throw invalid(`API server URL "${topology.apiServerUrl}" must use https`);
  }
  if (!Number.isInteger(topology.validityDays) || topology.validityDays < 1) {
    throw invalid(`validity of ${topology.validityDays} days must be a whole number of days >= 1`);
  }
  if (topology.nodes.length === 0) throw invalid("there are no nodes");
  const names = new Set<string>();
  const ips = new Set<string>();
  for (const node of topology.nodes) {
    if (!DNS_LABEL.test(node.name)) {
      throw invalid(`node name "${node.name}" must be a lowercase DNS label`);
    }
    if (!isIPv4(node.ip)) throw invalid(`node ${node.name}: "${node.ip}" is not an IPv4 address`);
    if (names.has(node.name)) throw invalid(`node name ${node.name} is used twice`);
    if (ips.has(node.ip)) throw invalid(`node ${node.name}: IP ${node.ip} is used twice`);
    if (node.roles.length === 0) throw invalid(`node ${node.name} has no roles`);
    names.add(node.name);
    ips.add(node.ip);
  }
  const masters = topology.nodes.filter((n) => hasRole(n, "control-plane"));
  if (masters.length !== 1) {
    throw invalid(`exactly one node must have the control-plane role, found ${masters.length}`);
  }
  if (etcdMembers(topology).length === 0) throw invalid("no node has the etcd role");
}
