import { createHash } from "node:crypto";
import { mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import pRetry from "p-retry";
import { runDoctor, type DoctorItem } from "../doctor/doctor.js";
import type { PullProgress } from "../artifacts/index.js";
import { downloadNarrator } from "../artifacts/progress-text.js";
import { K8slabError } from "../errors.js";
import { loadLab, type LoadedLab } from "../lab/load.js";
import { stageRegistryCredentials } from "../registry/credentials.js";
import type { LabPlan, NodePlan, Phase } from "../plan/plan.js";
import type { CheckResult } from "../probe/checks.js";
import type { Transport } from "../probe/transport.js";
import {
  chooseTransport,
  labMachines,
  pullLabArtifacts,
  serveLabArtifacts,
} from "../lifecycle/ops.js";
import { withLabLock } from "../lab-dir/lock.js";
import { defaultLabDir, renderLabDir, type RenderResult } from "../render/index.js";
import type { Runner } from "../util/exec.js";
import { MachineCommandError, type Machines } from "../machines/machines.js";
import type { ProviderName } from "../lab/providers.js";
import { readState, writeState, type LabState } from "./state.js";
import { provisionersFor, stagePhases, stagesUntil, type Stage, type StageName } from "./stages.js";

export type Provider = ProviderName;

export type ConvergeEvent =
  | { type: "step"; step: string; status: "start" | "done" | "skip" | "warn"; detail: string }
  | {
      type: "stage";
      stage: StageName;
      goal: string;
      status: "start" | "skip" | "provision" | "waiting" | "done";
      detail: string;
      pass: number;
      elapsedMs: number;
    }
  | { type: "output"; line: string };

export interface CreateOptions {
  lab: string;
  cwd: string;
  dir?: string | undefined;
  provider?: Provider | undefined;
  /** Stop once this stage is verified; a later create continues from there. */
  until?: StageName | undefined;
  env: NodeJS.ProcessEnv;
  signal?: AbortSignal;
  runner?: Runner;
  onEvent?: (event: ConvergeEvent) => void;
  /** Multiplies every stage deadline (tests shorten them, slow laptops lengthen them). */
  deadlineScale?: number;
  /** Milliseconds between checks while a stage waits. */
  pollMs?: number;
  /** A person watches a terminal: download progress may be finer than every 10%. */
  interactive?: boolean;
}

export interface StageOutcome {
  stage: StageName;
  status: "done" | "skipped";
  detail: string;
  passes: number;
}

export interface CreateResult {
  dir: string;
  lab: string;
  provider: Provider;
  stages: StageOutcome[];
  complete: boolean;
  kubeconfig: string;
  logs: string;
}

/** A stage missed its deadline: which, what it waited for, what it last saw, where the logs are. */
export class StageTimeoutError extends K8slabError {
  constructor(
    readonly stage: StageName,
    details: {
      goal: string;
      lastSeen: string;
      failing: readonly string[];
      failures: readonly string[];
      logs: string;
      diagnostic: string;
      budget: string;
    },
  ) {
    super(
      `stage ${stage} did not converge within ${details.budget}\n` +
        `  waited for: ${details.goal}\n  last seen:  ${details.lastSeen}` +
        (details.failing.length ? `\n  waiting on: ${details.failing.join(", ")}` : "") +
        (details.failures.length
          ? `\n  provisioning failures: ${details.failures.join("; ")}`
          : ""),
      {
        hint: `logs and journals are in ${details.logs}; next, look at: ${details.diagnostic}; then run create again to continue from this stage`,
      },
    );
    this.name = "StageTimeoutError";
  }
}

export function providerOf(plan: LabPlan, override?: Provider): Provider {
  return override ?? plan.lab.provider.name;
}

/** The doctor's checks that must pass before anything boots. */
export function failingChecks(items: DoctorItem[]): DoctorItem[] {
  return items.filter((i) => i.verdict === "fail");
}

/** Boot what is not running; returns the nodes whose VM was created anew (nothing of theirs ran). */
async function ensureMachines(
  vagrant: Machines,
  plan: LabPlan,
  provider: Provider,
  emit: (e: ConvergeEvent) => void,
): Promise<string[]> {
  const statuses = await vagrant.status();
  const stateOf = (n: NodePlan) => statuses.find((s) => s.name === n.name)?.state;
  const down = plan.nodes.filter((n) => stateOf(n) !== "running");
  const ssh = vagrant.kind === "ssh";
  if (down.length === 0 && !ssh) {
    emit({ type: "step", step: "machines", status: "skip", detail: "every VM is running" });
    return [];
  }
  // SSH nodes boot nothing: every node is checked (it answers, sudo works) before provisioning.
  const names = (ssh ? plan.nodes : down).map((n) => n.name);
  emit({
    type: "step",
    step: "machines",
    status: "start",
    detail: `${ssh ? "ssh to" : "vagrant up"} ${names.join(" ")}`,
  });
  await pRetry(() => vagrant.up({ provider, machines: names }), {
    retries: 2,
    shouldRetry: ({ error }) => error instanceof MachineCommandError && error.transient,
  });
  emit({
    type: "step",
    step: "machines",
    status: "done",
    detail: ssh ? `${plan.nodes.length} nodes answer over SSH` : `${plan.nodes.length} VMs running`,
  });
  return down.filter((n) => stateOf(n) === "not_created" || !stateOf(n)).map((n) => n.name);
}

/** The journals of a stage's units on the given nodes, one file per node, gathered in parallel. */
async function collectJournals(
  vagrant: Machines,
  nodes: readonly NodePlan[],
  stage: Stage,
  logs: string,
): Promise<void> {
  await mkdir(logs, { recursive: true });
  const script = stage.units
    .map((u) => `echo "=== journalctl -u ${u}"; sudo journalctl -u ${u} --no-pager -n 300 2>&1`)
    .join("; ");
  await Promise.all(
    nodes.map(async (node) => {
      try {
        const text = await vagrant.sshCommand(node.name, `${script}; true`, 90_000);
        await writeFile(join(logs, `journal-${stage.name}-${node.name}.log`), text);
      } catch {
        // Best effort: the VM may be down; the stage error says so.
      }
    }),
  );
}

/** The most telling line of a failed phase script: its own message, else the failing line. */
function scriptFailure(error: MachineCommandError): string {
  if (error.timedOut) return "stopped at the stage's deadline";
  const lines = error.outputTail.split("\n");
  const said = lines.filter((l) => /k8slab: phase \S+ on \S+: /.test(l)).pop();
  const trapped = lines.filter((l) => /k8slab: phase \S+ failed on/.test(l)).pop();
  if (said ?? trapped) return (said ?? trapped)!.replace(/^.*?k8slab: /, "");
  // Vagrant's own error (SSH refused, ...): its class and first line.
  const kind = error.kind.replace(/^Vagrant::Errors::/, "");
  return [kind, lines[0]?.slice(0, 120)].filter(Boolean).join(": ") || `exit ${error.exitCode}`;
}

/** A stage's next diagnostic in the words of the lab's machines: no Vagrant for an SSH lab. */
function diagnosticFor(stage: Stage, machines: Machines): string {
  if (machines.kind !== "ssh") return stage.diagnostic;
  return stage.diagnostic
    .replace(/vagrant ssh /g, "k8slab ssh ")
    .replace(/vagrant provision <node> --provision-with (\S+)/g, "k8slab provision --phase $1");
}

/** How long a stage waits for its check before running failed phases again. */
const RETRY_SOON_MS = 20_000;
/** The least time left worth starting another provisioning pass with. */
const MIN_PASS_MS = 60_000;

function duration(ms: number): string {
  return ms >= 90_000 ? `${Math.round(ms / 60_000)} min` : `${Math.round(ms / 1000)} s`;
}

/**
 * What a phase ran on a node: its script, and for pki the bundle uploaded with it. A recorded
 * success counts only while this is unchanged (a re-rendered lab runs changed phases again).
 */
async function phaseDigest(dir: string, node: string, phase: Phase): Promise<string> {
  const hash = createHash("sha256");
  hash.update(await readFile(join(dir, "provision", node, `${phase}.sh`)));
  if (phase === "pki") {
    const bundle = join(dir, "pki", "nodes", node);
    for (const name of (await readdir(bundle)).sort()) {
      hash.update(`\0${name}\0`);
      hash.update(await readFile(join(bundle, name)));
    }
  }
  return hash.digest("hex");
}

interface StageContext {
  dir: string;
  plan: LabPlan;
  vagrant: Machines;
  transport: Transport;
  env: Record<string, string>;
  logs: string;
  state: LabState;
  emit: (e: ConvergeEvent) => void;
  deadlineScale: number;
  pollMs: number;
  signal?: AbortSignal | undefined;
}

/** Phase bookkeeping of one create run: recorded successes against the current digests. */
class PhaseBook {
  private readonly digests = new Map<string, string>();
  private saving: Promise<void> = Promise.resolve();
  constructor(private readonly ctx: Pick<StageContext, "dir" | "state">) {}

  private async digest(node: string, phase: Phase): Promise<string> {
    const key = `${node}/${phase}`;
    let d = this.digests.get(key);
    if (!d) {
      d = await phaseDigest(this.ctx.dir, node, phase);
      this.digests.set(key, d);
    }
    return d;
  }

  async succeeded(node: string, phase: Phase): Promise<boolean> {
    const record = this.ctx.state.phases[node]?.[phase];
    return record !== undefined && record.digest === (await this.digest(node, phase));
  }

  /** The phases of `phases` a node has that have not succeeded there with what is rendered now. */
  async pending(node: NodePlan, phases: readonly Phase[]): Promise<Phase[]> {
    const mine = node.phases.filter((p) => phases.includes(p));
    const done = await Promise.all(mine.map((p) => this.succeeded(node.name, p)));
    return mine.filter((_, i) => !done[i]);
  }

  async record(node: string, phases: readonly Phase[]): Promise<void> {
    const at = new Date().toISOString();
    const mine = (this.ctx.state.phases[node] ??= {});
    for (const phase of phases) mine[phase] = { at, digest: await this.digest(node, phase) };
    // Nodes finish in parallel: one write at a time, each with everything recorded so far.
    this.saving = this.saving.then(() => writeState(this.ctx.dir, this.ctx.state));
    await this.saving;
  }

  forget(node: string): void {
    delete this.ctx.state.phases[node];
  }
}

/** Phases a provisioner list finished, by the phase that owns each provisioner. */
function phasesOf(provisioners: readonly string[], asked: readonly Phase[]): Phase[] {
  return asked.filter((p) => provisioners.includes(p));
}

async function stageDone(stage: Stage, plan: LabPlan, state: LabState, book: PhaseBook) {
  if (!state.stages[stage.name]) return false;
  for (const node of plan.nodes) {
    if ((await book.pending(node, stagePhases(stage, node))).length > 0) return false;
  }
  return true;
}

async function runStage(
  stage: Stage,
  ctx: StageContext,
  book: PhaseBook,
): Promise<{ detail: string; passes: number }> {
  const start = Date.now();
  const budget = stage.deadlineMs * ctx.deadlineScale;
  const deadline = start + budget;
  const window = budget / stage.maxPasses;
  const elapsed = () => Date.now() - start;
  let last: CheckResult = { ok: false, detail: "not checked yet" };
  const failures: string[] = [];
  const failedNodes = new Set<string>();
  const event = (status: "provision" | "waiting", detail: string, pass: number) =>
    ctx.emit({
      type: "stage",
      stage: stage.name,
      goal: stage.goal,
      status,
      detail,
      pass,
      elapsedMs: elapsed(),
    });
  let pass = 0;
  // A pass that would have less than this left does not start: the last check stands.
  const minPass = Math.min(MIN_PASS_MS, budget / 10);
  while (pass < stage.maxPasses && deadline - Date.now() > (pass === 0 ? 0 : minPass)) {
    pass += 1;
    // What each node runs: phases that have not succeeded there, and from the second pass on,
    // the stage's retry phases where the check says the goal waits.
    const work = await Promise.all(
      ctx.plan.nodes.map(async (node) => {
        const phases = new Set<Phase>(await book.pending(node, stagePhases(stage, node)));
        const named = last.failing ? last.failing.includes(node.name) : true;
        if (pass > 1 && named) {
          for (const p of stage.retryPhases ?? stagePhases(stage, node)) phases.add(p);
        }
        return { node, phases: node.phases.filter((p) => phases.has(p)) };
      }),
    );
    const toRun = work.filter((w) => w.phases.length > 0);
    await Promise.all(
      toRun.map(async ({ node, phases }) => {
        const provisioners = provisionersFor(node, phases);
        event("provision", `${node.name}: ${provisioners.join(", ")}`, pass);
        try {
          await ctx.vagrant.provision(
            node.name,
            provisioners,
            ctx.env,
            Math.max(1_000, deadline - Date.now()),
          );
          failedNodes.delete(node.name);
          await book.record(node.name, phases);
        } catch (error) {
          // A permanent Vagrant error (no provider, bad config) stops at once. A failing phase
          // script is expected while the cluster assembles (seed 004's failing first pass), and
          // a transient error (SSH not up yet) or the deadline passes too: the phases that did
          // not finish run again on the next pass, and the stage is not done until they have.
          if (
            !(error instanceof MachineCommandError) ||
            !(error.provisioningFailure || error.transient || error.timedOut)
          ) {
            throw error;
          }
          failedNodes.add(node.name);
          failures.push(`${node.name} pass ${pass}: ${scriptFailure(error)} (${error.logFile})`);
          await book.record(node.name, phasesOf(error.completed, phases));
        }
      }),
    );
    const pending = (
      await Promise.all(
        ctx.plan.nodes.map(async (n) => ({
          node: n.name,
          phases: await book.pending(n, stagePhases(stage, n)),
        })),
      )
    ).filter((p) => p.phases.length > 0);
    // Phases that failed get another pass soon (what they wait for may come up meanwhile);
    // otherwise the stage waits for its check for up to its share of the deadline.
    const passEnd = Math.min(deadline, Date.now() + (pending.length ? RETRY_SOON_MS : window));
    for (let i = 0; i < 100_000; i++) {
      ctx.signal?.throwIfAborted();
      last = await stage.check(ctx.plan, ctx.transport);
      if (last.ok) break;
      event("waiting", last.detail, pass);
      if (Date.now() + ctx.pollMs >= passEnd) break;
      await sleep(ctx.pollMs, undefined, ctx.signal ? { signal: ctx.signal } : {});
    }
    if (last.ok && pending.length === 0) return { detail: last.detail, passes: pass };
    if (last.ok) {
      const said = pending.map((p) => `${p.node}: ${p.phases.join(", ")}`).join("; ");
      last = {
        ok: false,
        detail: `${last.detail}, but phases have not succeeded on ${said}`,
        failing: pending.map((p) => p.node),
      };
      event("waiting", last.detail, pass);
    }
  }
  const look = ctx.plan.nodes.filter(
    (n) => last.failing?.includes(n.name) || failedNodes.has(n.name),
  );
  const failing = look.map((n) => n.name);
  await collectJournals(ctx.vagrant, look.length ? look : ctx.plan.nodes, stage, ctx.logs);
  throw new StageTimeoutError(stage.name, {
    goal: stage.goal,
    lastSeen: last.detail,
    failing,
    failures: failures.slice(-3),
    logs: ctx.logs,
    diagnostic: diagnosticFor(stage, ctx.vagrant).replaceAll(
      "<node>",
      failing[0] ?? ctx.plan.master.name,
    ),
    budget: duration(budget),
  });
}

/**
 * `k8slab create`: check the host, render, download artifacts once, boot, then provision stage
 * by stage until each stage's check passes. Phases that succeeded and verified stages are
 * recorded in state.json; the next run does only what is left.
 */
export async function createLab(options: CreateOptions): Promise<CreateResult> {
  const loaded = await loadLab(options.lab, { cwd: options.cwd });
  const dir = defaultLabDir(options.cwd, loaded.lab, options.dir);
  return withLabLock(dir, "create", () => createLocked(options, loaded, dir));
}

async function createLocked(
  options: CreateOptions,
  loaded: LoadedLab,
  intended: string,
): Promise<CreateResult> {
  const emit = options.onEvent ?? (() => {});
  // The host checks come first: a host that cannot run the lab gets nothing written (the lock
  // takes its directory back when nothing else was written).
  if (options.provider && loaded.lab.provider.name === "ssh") {
    throw new K8slabError(
      `lab ${loaded.lab.name} runs on existing machines over SSH: --provider ${options.provider} does not apply`,
      { exitCode: 2, hint: "leave out --provider (or set provider.name in the lab file)" },
    );
  }
  const provider = options.provider ?? loaded.lab.provider.name;
  emit({ type: "step", step: "doctor", status: "start", detail: "host checks" });
  const items = await runDoctor({
    lab: loaded.lab,
    provider,
    dir: intended,
    ...(options.runner ? { runner: options.runner } : {}),
  });
  const failing = failingChecks(items);
  if (failing.length > 0) {
    const first = failing[0]!;
    throw new K8slabError(`host check failed: ${first.name}: ${first.detail}`, {
      hint: first.hint ?? "run k8slab doctor for every check",
    });
  }
  emit({ type: "step", step: "doctor", status: "done", detail: `${items.length} checks passed` });

  emit({ type: "step", step: "render", status: "start", detail: "lab directory and PKI" });
  const rendered: RenderResult = await renderLabDir({
    lab: options.lab,
    cwd: options.cwd,
    dir: options.dir,
    loaded,
  });
  const { plan, dir, pki } = rendered;
  const pkiNote = [
    pki.created.length ? `issued ${pki.created.length} certificates` : "",
    pki.reissued.length
      ? `re-issued ${pki.reissued.map((r) => `${r.name} (${r.reason})`).join(", ")}`
      : "",
    !pki.created.length && !pki.reissued.length ? `kept all ${pki.reused.length} certificates` : "",
  ].filter(Boolean);
  emit({
    type: "step",
    step: "render",
    status: "done",
    detail: `${dir}; pki: ${pkiNote.join("; ")}`,
  });

  // The registry's login goes into the nodes' bundles now, read from where the lab file says.
  await stageRegistryCredentials(dir, plan.lab, {
    env: options.env,
    labFileDir: dirname(loaded.path),
    labRef: options.lab,
  });

  const logs = join(dir, "logs");
  const { state, problem } = await readState(dir, plan.lab.name, { setAside: true });
  if (problem) emit({ type: "step", step: "state", status: "warn", detail: problem });
  const book = new PhaseBook({ dir, state });
  const until = options.until ?? "addons";
  const wanted = stagesUntil(until);
  const outcomes: StageOutcome[] = [];
  const kubeconfig = join(dir, "pki", "admin.kubeconfig");
  const result = (complete: boolean): CreateResult => ({
    dir,
    lab: plan.lab.name,
    provider,
    stages: outcomes,
    complete,
    kubeconfig,
    logs,
  });

  const skip = (stage: Stage): void => {
    const done = state.stages[stage.name]!;
    outcomes.push({ stage: stage.name, status: "skipped", detail: done.detail, passes: 0 });
    emit({
      type: "stage",
      stage: stage.name,
      goal: stage.goal,
      status: "skip",
      detail: `verified ${done.verifiedAt}`,
      pass: 0,
      elapsedMs: 0,
    });
  };
  const done = await Promise.all(wanted.map((s) => stageDone(s, plan, state, book)));
  // Everything asked for is verified already, with what is rendered now: no Vagrant run at all.
  if (done.every(Boolean)) {
    wanted.forEach(skip);
    return result(until === "addons");
  }

  const narrate = downloadNarrator(Boolean(options.interactive));
  const runOptions = {
    env: options.env,
    runner: options.runner,
    signal: options.signal,
    provider,
    labRef: options.lab,
    onLine: (line: string) => emit({ type: "output", line }),
    onDownload: (p: PullProgress) => {
      const line = narrate(p);
      if (line) {
        const status = p.event === "recorded" || p.event === "damaged" ? "warn" : "start";
        emit({ type: "step", step: "artifacts", status, detail: line });
      }
    },
  };
  const vagrant = labMachines(rendered, runOptions);
  if (plan.nodes.some((n) => n.artifacts.length > 0)) {
    emit({
      type: "step",
      step: "artifacts",
      status: "start",
      detail: "download once per host, verify",
    });
  }
  const pulled = await pullLabArtifacts(plan, runOptions);
  if (pulled.length > 0) {
    emit({
      type: "step",
      step: "artifacts",
      status: "done",
      detail: `${pulled.length} verified in the cache`,
    });
  }
  const created = await ensureMachines(vagrant, plan, provider, emit);
  if (created.length > 0) {
    // New VMs have nothing of what was recorded for their names: their phases run again, and
    // every stage is checked again.
    for (const name of created) book.forget(name);
    state.stages = {};
    await writeState(dir, state);
  }
  await serveLabArtifacts(plan, pulled, async (env) => {
    if (env.K8SLAB_ARTIFACTS_URL) {
      emit({
        type: "step",
        step: "artifacts",
        status: "done",
        detail: `served to the VMs at ${env.K8SLAB_ARTIFACTS_URL}`,
      });
    }
    const transport = chooseTransport(plan, join(dir, "pki"), vagrant);
    const ctx: StageContext = {
      dir,
      plan,
      vagrant,
      transport,
      env,
      logs,
      state,
      emit,
      deadlineScale: options.deadlineScale ?? 1,
      pollMs: options.pollMs ?? 5_000,
      signal: options.signal,
    };
    // Once a stage had to run, the ones after it are checked again even if recorded: what it
    // changed (a restarted etcd, a new unit) may have changed what they verified.
    let changed = false;
    for (const stage of wanted) {
      if (!changed && (await stageDone(stage, plan, state, book))) {
        skip(stage);
        continue;
      }
      changed = true;
      delete state.stages[stage.name];
      emit({
        type: "stage",
        stage: stage.name,
        goal: stage.goal,
        status: "start",
        detail: `checks via ${transport.kind}`,
        pass: 0,
        elapsedMs: 0,
      });
      const started = Date.now();
      const { detail, passes } = await runStage(stage, ctx, book);
      state.stages[stage.name] = { verifiedAt: new Date().toISOString(), detail, passes };
      await writeState(dir, state);
      outcomes.push({ stage: stage.name, status: "done", detail, passes });
      emit({
        type: "stage",
        stage: stage.name,
        goal: stage.goal,
        status: "done",
        detail,
        pass: passes,
        elapsedMs: Date.now() - started,
      });
    }
  });
  return result(until === "addons");
}
