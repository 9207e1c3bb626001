import { SERVICE_ACCOUNT } from "./cert-specs.js";
import { certFile, keyFile } from "./store.js";
import type { PkiNode } from "./topology.js";
import { hasRole } from "./topology.js";

function pair(name: string): string[] {
  return [certFile(name), keyFile(name)];
}

/**
 * The files (names as in the pki directory) a node receives: only what it runs needs, never
 * ca-key.pem and never another node's keys.
 */
export function planNodeBundle(node: PkiNode): string[] {
  const files = [
    "ca.pem",
    // flannel on every node reads etcd, which trusts its own CA.
    "etcd-ca.pem",
    ...pair("etcd-client-flannel"),
    ...pair(`kubelet-client-${node.name}`),
    ...pair(`kubelet-server-${node.name}`),
    `kubelet-${node.name}.kubeconfig`,
    // Every node registers and runs kube-proxy.
    "kube-proxy.kubeconfig",
    ...pair("kube-proxy"),
  ];
  if (hasRole(node, "etcd")) {
    files.push(...pair(`etcd-server-${node.name}`), ...pair(`etcd-peer-${node.name}`));
  }
  if (hasRole(node, "control-plane")) {
    files.push(
      ...pair("apiserver"),
      ...pair("apiserver-kubelet-client"),
      ...pair("etcd-client-apiserver"),
      "kube-controller-manager.kubeconfig",
      "kube-scheduler.kubeconfig",
      ...pair(SERVICE_ACCOUNT),
    );
  }
  return files;
}
