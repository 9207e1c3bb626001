import type { LabPlan, NodePlan, Phase } from "../plan/plan.js";
import {
  checkAddons,
  checkApiServer,
  checkEtcd,
  checkFlannelNetwork,
  checkNodesReady,
  type CheckResult,
} from "../probe/checks.js";
import type { Transport } from "../probe/transport.js";
import { STAGE_NAMES, type StageName } from "./stage-names.js";

/**
 * The stages of `create`, in order. Each runs its provisioning phases on every node that has them
 * (nodes in parallel), then waits until its check passes, all within its own deadline. A stage is
 * done when every one of its phases succeeded on every such node and its check holds; until then
 * it gets another pass (seed 004's manual `vagrant provision` runs), up to `maxPasses`: phases
 * that failed run again where they failed, and `retryPhases` run again on the nodes the check
 * names.
 */
export interface Stage {
  name: StageName;
  /** What the stage waits for, in words, for progress and errors. */
  goal: string;
  phases: readonly Phase[];
  /** Phases this stage runs on the control-plane node only (the other nodes run them later). */
  masterPhases?: readonly Phase[];
  /** Phases run again on the nodes a failing check names, on later passes (default: the stage's). */
  retryPhases?: readonly Phase[];
  check: (plan: LabPlan, t: Transport) => Promise<CheckResult>;
  deadlineMs: number;
  maxPasses: number;
  /** systemd units whose journal helps when the stage fails. */
  units: readonly string[];
  /** The next thing to look at when it fails; `<node>` is the node to look at. */
  diagnostic: string;
}

export { STAGE_NAMES, type StageName } from "./stage-names.js";

const MIN = 60_000;

export const STAGES: readonly Stage[] = [
  {
    name: "etcd",
    goal: "every etcd member is healthy",
    phases: ["base", "pki", "artifacts", "etcd"],
    retryPhases: ["etcd"],
    check: checkEtcd,
    deadlineMs: 10 * MIN,
    maxPasses: 3,
    units: ["etcd"],
    diagnostic: "vagrant ssh <node> -c 'sudo journalctl -u etcd --no-pager | tail -50'",
  },
  {
    name: "network",
    goal: "flannel's network is in etcd",
    phases: ["flannel-config"],
    check: checkFlannelNetwork,
    deadlineMs: 5 * MIN,
    maxPasses: 3,
    units: ["etcd"],
    diagnostic: "vagrant provision <node> --provision-with flannel-config",
  },
  {
    // The other nodes' kubelets and kube-proxies start in the next stage: before the API server
    // answers they would only hammer it with TLS handshakes, which on a slow VM starves it.
    name: "control-plane",
    goal: "the API server answers /healthz",
    phases: ["flannel", "docker"],
    masterPhases: ["kubelet", "control-plane"],
    check: checkApiServer,
    deadlineMs: 20 * MIN,
    maxPasses: 3,
    units: ["flanneld", "docker", "kubelet"],
    diagnostic:
      "vagrant ssh <node> -c 'sudo docker ps -a; sudo journalctl -u kubelet --no-pager | tail -50'",
  },
  {
    name: "nodes",
    goal: "every node is Ready",
    phases: ["kubelet", "kube-proxy"],
    retryPhases: ["flannel", "docker", "kubelet", "kube-proxy"],
    check: checkNodesReady,
    deadlineMs: 10 * MIN,
    maxPasses: 3,
    units: ["kubelet", "kube-proxy", "flanneld", "docker"],
    diagnostic:
      "kubectl describe node <node> (k8slab kubeconfig prints the KUBECONFIG line); vagrant ssh <node> -c 'sudo journalctl -u kubelet --no-pager | tail -50'",
  },
  {
    name: "addons",
    goal: "the addons run",
    phases: ["addons"],
    check: checkAddons,
    deadlineMs: 15 * MIN,
    maxPasses: 3,
    units: ["kubelet", "docker"],
    diagnostic: "kubectl -n kube-system get pods; kubectl -n kube-system describe pods",
  },
];

/** The phases a stage runs on a node, in the node's order. */
export function stagePhases(stage: Stage, node: NodePlan): Phase[] {
  const mine = [...stage.phases, ...(node.isMaster ? (stage.masterPhases ?? []) : [])];
  return node.phases.filter((p) => mine.includes(p));
}

/** The Vagrant provisioner names one node runs for some phases (pki includes its upload). */
export function provisionersFor(node: NodePlan, phases: readonly Phase[]): string[] {
  return node.phases
    .filter((p) => phases.includes(p))
    .flatMap((p) => (p === "pki" ? ["pki-upload", "pki"] : [p]));
}

/** The stages up to and including `until`, in order. */
export function stagesUntil(until: StageName): readonly Stage[] {
  return STAGES.slice(0, STAGE_NAMES.indexOf(until) + 1);
}
