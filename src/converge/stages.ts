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

/**
 * The stages of `create`, in order. Each runs some provisioning phases on some nodes, then waits
 * until its check passes, with its own deadline; a stage that does not converge gets another
 * provisioning pass (seed 004's manual `vagrant provision` runs), up to `maxPasses`.
 */
export interface Stage {
  name: StageName;
  /** What the stage waits for, in words, for progress and errors. */
  goal: string;
  phases: readonly Phase[];
  /** Phases run again on later passes (default: the same phases). */
  retryPhases?: readonly Phase[];
  check: (plan: LabPlan, t: Transport) => Promise<CheckResult>;
  deadlineMs: number;
  maxPasses: number;
  /** systemd units whose journal helps when the stage fails. */
  units: readonly string[];
  /** The next thing to look at when it fails. */
  diagnostic: string;
}

export const STAGE_NAMES = ["etcd", "network", "control-plane", "nodes", "addons"] as const;
export type StageName = (typeof STAGE_NAMES)[number];

const MIN = 60_000;

export const STAGES: readonly Stage[] = [
  {
    name: "etcd",
    goal: "etcd has quorum",
    phases: ["base", "pki", "artifacts", "etcd"],
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
    diagnostic: "vagrant provision <master> --provision-with flannel-config",
  },
  {
    name: "control-plane",
    goal: "the API server answers /healthz",
    phases: ["flannel", "docker", "kubelet", "control-plane", "kube-proxy"],
    check: checkApiServer,
    deadlineMs: 20 * MIN,
    maxPasses: 3,
    units: ["flanneld", "docker", "kubelet"],
    diagnostic:
      "vagrant ssh <master> -c 'sudo docker ps -a; sudo journalctl -u kubelet --no-pager | tail -50'",
  },
  {
    name: "nodes",
    goal: "every node is Ready",
    phases: [],
    retryPhases: ["kubelet", "kube-proxy"],
    check: checkNodesReady,
    deadlineMs: 10 * MIN,
    maxPasses: 3,
    units: ["kubelet", "kube-proxy", "flanneld", "docker"],
    diagnostic: "kubectl describe nodes (k8slab kubeconfig prints the KUBECONFIG line)",
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
