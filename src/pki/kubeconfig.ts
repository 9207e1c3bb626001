import { stringify } from "yaml";
import type { PkiTopology } from "./topology.js";

export interface KubeconfigInput {
  clusterName: string;
  server: string;
  userName: string;
  caPem: string;
  certPem: string;
  keyPem: string;
}

function base64(text: string): string {
  return Buffer.from(text, "utf8").toString("base64");
}

/** A self-contained kubeconfig: CA, client certificate and key embedded as base64 data. */
export function renderKubeconfig(input: KubeconfigInput): string {
  const config = {
    apiVersion: "v1",
    kind: "Config",
    clusters: [
      {
        name: input.clusterName,
        cluster: {
          "certificate-authority-data": base64(input.caPem),
          server: input.server,
        },
      },
    ],
    users: [
      {
        name: input.userName,
        user: {
          "client-certificate-data": base64(input.certPem),
          "client-key-data": base64(input.keyPem),
        },
      },
    ],
    contexts: [
      {
        name: input.clusterName,
        context: { cluster: input.clusterName, user: input.userName },
      },
    ],
    "current-context": input.clusterName,
    preferences: {},
  };
  return stringify(config, { lineWidth: 0 });
}

/**
 * Where each component reaches the API server. The controller manager and scheduler run as
 * static pods with host networking on the master and use the loopback address (in the apiserver
 * certificate), so their kubeconfigs do not depend on the master's IP; kubelets, kube-proxy and
 * the host's admin use the master's private address.
 */
export const LOCAL_API_SERVER = "https://127.0.0.1:6443";

export interface KubeconfigPlan {
  /** File name in the pki directory, e.g. `kubelet-minion1.kubeconfig`. */
  file: string;
  /** Name of the certificate (and key) it embeds. */
  cert: string;
  userName: string;
  server: string;
  node?: string;
}

export function planKubeconfigs(topology: PkiTopology): KubeconfigPlan[] {
  return [
    { file: "admin.kubeconfig", cert: "admin", userName: "admin", server: topology.apiServerUrl },
    ...topology.nodes.map((node) => ({
      file: `kubelet-${node.name}.kubeconfig`,
      cert: `kubelet-client-${node.name}`,
      userName: `system:node:${node.name}`,
      server: topology.apiServerUrl,
      node: node.name,
    })),
    {
      file: "kube-proxy.kubeconfig",
      cert: "kube-proxy",
      userName: "system:kube-proxy",
      server: topology.apiServerUrl,
    },
    {
      file: "kube-controller-manager.kubeconfig",
      cert: "kube-controller-manager",
      userName: "system:kube-controller-manager",
      server: LOCAL_API_SERVER,
    },
    {
      file: "kube-scheduler.kubeconfig",
      cert: "kube-scheduler",
      userName: "system:kube-scheduler",
      server: LOCAL_API_SERVER,
    },
  ];
}
