import { join } from "node:path";
import { K8slabError } from "../errors.js";
import { nodesDir } from "./store.js";

export type { NodeRole, PkiNode, PkiTopology } from "./topology.js";
export { validateTopology } from "./topology.js";
export type { CertSpec } from "./cert-specs.js";
export { planCertificates } from "./cert-specs.js";
export { planNodeBundle } from "./bundles.js";
export { LOCAL_API_SERVER } from "./kubeconfig.js";
export type { EnsurePkiOptions, PkiResult } from "./ensure.js";
export { ensurePki } from "./ensure.js";
export type { CheckPkiExpiryOptions, ExpiryWarning } from "./expiry.js";
export { checkPkiExpiry } from "./expiry.js";

/** `<labDir>/pki/nodes/<node>`: the files that node, and only that node, receives. */
export function nodeBundleDir(labDir: string, nodeName: string): string {
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(nodeName)) {
    throw new K8slabError(`"${nodeName}" is not a valid node name`, {
      hint: "node names are lowercase DNS labels, e.g. minion1",
    });
  }
  return join(nodesDir(labDir), nodeName);
}
