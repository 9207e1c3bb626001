import { rm } from "node:fs/promises";
import { join } from "node:path";
import {
  cacheDir,
  pullLabDownloads,
  serveArtifacts,
  type PulledArtifact,
  type PullProgress,
} from "../artifacts/index.js";
import { readState, statePath } from "../converge/state.js";
import { provisionersFor } from "../converge/stages.js";
import { K8slabError } from "../errors.js";
import { labFileDirOf, stageRegistryCredentials } from "../registry/credentials.js";
import { withLabLock } from "../lab-dir/lock.js";
import { checkPkiExpiry, type ExpiryWarning } from "../pki/index.js";
import { PHASES, type LabPlan, type Phase } from "../plan/plan.js";
import {
  checkAddons,
  checkApiServer,
  checkEtcd,
  checkNodesReady,
  type CheckResult,
} from "../probe/checks.js";
import {
  HttpsTransport,
  SshTransport,
  hostOnLabNetwork,
  type Transport,
} from "../probe/transport.js";
import type { Runner } from "../util/exec.js";
import { nthAddress, parseCidr } from "../util/ipv4.js";
import type { MachineStatus, Machines } from "../machines/machines.js";
import { SshMachines, sshDestroyRefusal } from "../ssh/ssh-machines.js";
import { hostAddressToward } from "../ssh/host-address.js";
import { Vagrant } from "../vagrant/vagrant.js";
import type { OpenLab } from "./open-lab.js";

export interface LabRunOptions {
  env: NodeJS.ProcessEnv;
  runner?: Runner | undefined;
  signal?: AbortSignal | undefined;
  onLine?: ((line: string) => void) | undefined;
  provider?: string | undefined;
  /** How to name the lab in hints: what the user typed (a built-in name or a file). */
  labRef?: string | undefined;
  /** Download progress of the lab's artifacts. */
  onDownload?: ((p: PullProgress) => void) | undefined;
}

/**
 * The lab's machines: Vagrant's VMs, or for a lab whose provider is ssh, the existing machines
 * reached over SSH. The one place that chooses.
 */
export function labMachines(open: Pick<OpenLab, "dir" | "lab">, options: LabRunOptions): Machines {
  if (open.lab.provider.name === "ssh") {
    return new SshMachines({
      dir: open.dir,
      lab: open.lab,
      logDir: join(open.dir, "logs"),
      env: options.env,
      ...(options.runner ? { runner: options.runner } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.onLine ? { onLine: options.onLine } : {}),
    });
  }
  return new Vagrant({
    cwd: open.dir,
    logDir: join(open.dir, "logs"),
    env: { ...options.env, VAGRANT_DEFAULT_PROVIDER: options.provider ?? open.lab.provider.name },
    ...(options.runner ? { runner: options.runner } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.onLine ? { onLine: options.onLine } : {}),
  });
}

/** Download (once per host) and verify every artifact and image of the lab: what its nodes fetch. */
export async function pullLabArtifacts(
  plan: LabPlan,
  options: LabRunOptions,
): Promise<PulledArtifact[]> {
  const { artifacts, images } = await pullLabDownloads(plan.lab, {
    cache: cacheDir(options.env),
    labRef: options.labRef,
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.onDownload ? { onProgress: options.onDownload } : {}),
  });
  return [...artifacts, ...images];
}

/** Run `fn` with these artifacts served to the lab's VMs (when there are any); env for provisioners. */
export async function serveLabArtifacts<T>(
  plan: LabPlan,
  pulled: readonly PulledArtifact[],
  fn: (env: Record<string, string>) => Promise<T>,
): Promise<T> {
  if (pulled.length === 0) return fn({});
  const server = await serveArtifacts(pulled, {
    // Machines k8slab did not create reach the host at its own address toward them.
    advertise:
      plan.lab.provider.name === "ssh"
        ? await hostAddressToward(plan.master.ip)
        : nthAddress(parseCidr(plan.lab.network.hostOnly), 1),
    allow: [plan.lab.network.hostOnly],
  });
  try {
    return await fn({ K8SLAB_ARTIFACTS_URL: server.url });
  } finally {
    await server.close();
  }
}

/** Run `fn` with the lab's artifacts pulled and served to its VMs; env for provisioners. */
export async function withArtifacts<T>(
  plan: LabPlan,
  options: LabRunOptions,
  fn: (env: Record<string, string>) => Promise<T>,
): Promise<T> {
  return serveLabArtifacts(plan, await pullLabArtifacts(plan, options), fn);
}

/** HTTPS from the host when it is on the lab's network; else curl on the master over SSH. */
export function chooseTransport(plan: LabPlan, pkiDir: string, vagrant: Machines): Transport {
  if (hostOnLabNetwork(plan.lab.network.hostOnly)) return new HttpsTransport(pkiDir);
  return new SshTransport(
    (command, timeoutMs) => vagrant.sshCommand(plan.master.name, command, timeoutMs),
    plan.paths.pki,
  );
}

/** `k8slab provision [--phase P]`: one phase, or every phase in order, on every node that has it. */
export const provisionLab: typeof provisionUnlocked = (open, o) =>
  withLabLock(open.dir, "provision", () => provisionUnlocked(open, o));
async function provisionUnlocked(
  open: OpenLab,
  options: LabRunOptions & {
    phase?: Phase | undefined;
    /** The command that creates this lab, for the hint when its VMs do not exist. */
    createCommand?: string | undefined;
  },
): Promise<{ ran: { node: string; provisioners: string[] }[] }> {
  if (options.phase && !PHASES.includes(options.phase)) {
    throw new K8slabError(`unknown phase ${JSON.stringify(options.phase)}`, {
      exitCode: 2,
      hint: `phases: ${PHASES.join(", ")}`,
    });
  }
  const phases = options.phase ? [options.phase] : [...PHASES];
  const vagrant = labMachines(open, options);
  // The VMs first: provisioning needs them running, and finding out after a download is slow.
  const targets = open.plan.nodes.filter((n) => provisionersFor(n, phases).length > 0);
  const machines = await vagrant.status();
  const stateOf = (name: string) => machines.find((m) => m.name === name)?.state ?? "not_created";
  const notCreated = targets.filter((n) => stateOf(n.name) === "not_created").map((n) => n.name);
  const notRunning = targets
    .filter((n) => !["not_created", "running"].includes(stateOf(n.name)))
    .map((n) => `${n.name} (${stateOf(n.name).replace(/_/g, " ")})`);
  const create = options.createCommand ?? `k8slab create ${open.lab.name} --dir ${open.dir}`;
  if (notCreated.length > 0) {
    throw new K8slabError(
      `the VMs of lab ${open.lab.name} are not created: ${notCreated.join(", ")}; nothing to provision`,
      { hint: `create them (it boots and provisions the lab): ${create}` },
    );
  }
  if (notRunning.length > 0 && vagrant.kind === "ssh") {
    throw new K8slabError(
      `nodes of lab ${open.lab.name} do not answer over SSH: ${notRunning.join(", ")}`,
      { hint: `k8slab doctor ${options.labRef ?? open.lab.name} says why, node by node` },
    );
  }
  if (notRunning.length > 0) {
    throw new K8slabError(
      `the VMs of lab ${open.lab.name} are not running: ${notRunning.join(", ")}`,
      { hint: `boot them: cd ${open.dir} && vagrant up --no-provision (or: ${create})` },
    );
  }
  if (phases.includes("pki")) {
    await stageRegistryCredentials(open.dir, open.lab, {
      env: options.env,
      labFileDir: await labFileDirOf(open.dir),
      labRef: options.labRef,
    });
  }
  const ran: { node: string; provisioners: string[] }[] = [];
  await withArtifacts(open.plan, options, async (env) => {
    for (const node of open.plan.nodes) {
      const provisioners = provisionersFor(node, phases);
      if (provisioners.length === 0) continue;
      await vagrant.provision(node.name, provisioners, env);
      ran.push({ node: node.name, provisioners });
    }
  });
  if (ran.length === 0) {
    throw new K8slabError(`no node runs the phase ${options.phase}`, { exitCode: 2 });
  }
  return { ran };
}

export interface LabStatus {
  dir: string;
  lab: string;
  machines: MachineStatus[];
  stages: Record<string, { verifiedAt: string; detail: string }>;
  etcd?: CheckResult & { members: { name: string; peerURLs: string[] }[] };
  apiServer?: CheckResult;
  nodes?: CheckResult & { ready: string[] };
  addons?: CheckResult;
  certificates: ExpiryWarning[];
  /** Every VM runs and what every verified stage promised holds now. */
  healthy: boolean;
  /** What is not as it should be, one line each (empty when healthy). */
  problems: string[];
}

/**
 * `k8slab status`: VM states, then each verified stage's check again (etcd members, the API
 * server, nodes, addons), and certificate expiry. Healthy means all of it holds now.
 */
export async function labStatus(open: OpenLab, options: LabRunOptions): Promise<LabStatus> {
  const vagrant = labMachines(open, options);
  const machines = await vagrant.status();
  const { state, problem } = await readState(open.dir, open.lab.name);
  const certificates = await checkPkiExpiry(open.dir);
  const problems: string[] = problem ? [problem] : [];
  for (const node of open.plan.nodes) {
    const vm = machines.find((m) => m.name === node.name)?.state ?? "unknown";
    if (vm !== "running") problems.push(`${node.name} is ${vm.replace(/_/g, " ")}`);
  }
  const status: LabStatus = {
    dir: open.dir,
    lab: open.lab.name,
    machines,
    stages: state.stages,
    certificates,
    healthy: false,
    problems,
  };
  const masterUp = machines.find((m) => m.name === open.plan.master.name)?.state === "running";
  if (masterUp) {
    const transport = chooseTransport(open.plan, join(open.dir, "pki"), vagrant);
    const look = async <T extends CheckResult>(what: string, check: Promise<T>): Promise<T> => {
      const result = await check;
      if (!result.ok) problems.push(`${what}: ${result.detail}`);
      return result;
    };
    status.etcd = await look("etcd", checkEtcd(open.plan, transport));
    if (state.stages["control-plane"]) {
      status.apiServer = await look("API server", checkApiServer(open.plan, transport));
    }
    if (state.stages["nodes"]) {
      status.nodes = await look("nodes", checkNodesReady(open.plan, transport));
    }
    if (state.stages["addons"]) {
      status.addons = await look("addons", checkAddons(open.plan, transport));
    }
  }
  status.healthy = problems.length === 0;
  return status;
}

/**
 * `k8slab destroy`: every VM goes; the PKI stays unless purge (then the whole lab directory).
 * When Vagrant reports no machine created there is nothing for `vagrant destroy` to do (and it
 * may fail on such a lab), so it is not run. Resolves with whether VMs were destroyed.
 */
export const destroyLab: typeof destroyUnlocked = (open, o) =>
  withLabLock(open.dir, "destroy", () => destroyUnlocked(open, o));
async function destroyUnlocked(
  open: OpenLab,
  options: LabRunOptions & { purge: boolean },
): Promise<{ vms: boolean }> {
  if (open.lab.provider.name === "ssh") {
    // The machines are not k8slab's: only the lab directory goes, and only when asked.
    if (!options.purge) throw sshDestroyRefusal(open.lab.name);
    await rm(open.dir, { recursive: true, force: true });
    return { vms: false };
  }
  const vagrant = labMachines(open, options);
  const machines = await vagrant.status();
  const vms = machines.some((m) => m.state !== "not_created");
  if (vms) await vagrant.destroy();
  await rm(statePath(open.dir), { force: true });
  if (options.purge) await rm(open.dir, { recursive: true, force: true });
  return { vms };
}
