import { existsSync } from "node:fs";
import { createInterface } from "node:readline/promises";
import { join, resolve } from "node:path";
import { Command, Option } from "commander";
import { K8slabError } from "../../errors.js";
import { PROVIDERS } from "../../lab/providers.js";
import type { Lab } from "../../lab/schema.js";
import type { LabDirOptions, OpenLab } from "../../lifecycle/open-lab.js";
import type { LabStatus } from "../../lifecycle/ops.js";
import { PHASES, type Phase } from "../../plan/plan.js";
import { shellQuote } from "../../util/quote.js";
import { printJson, printResult, say, type CliContext } from "../context.js";
import { untilInterrupted } from "../interrupt.js";
import { RESUMABLE } from "./create.js";

// What the commands run is loaded when one runs, so that `k8slab --help` stays instant.
const openLab = async (options: LabDirOptions): Promise<OpenLab> =>
  (await import("../../lifecycle/open-lab.js")).openLab(options);
const ops = () => import("../../lifecycle/ops.js");

const labArg = ["[lab]", "lab name or file (default: the lab directory you are in)"] as const;
const dirOption = [
  "-d, --dir <dir>",
  "lab directory (default: ./<lab name>, or the current directory)",
] as const;

export function statusCommand(ctx: CliContext): Command {
  return new Command("status")
    .description("VM states, etcd members, nodes, addons and certificate expiry of a lab")
    .argument(...labArg)
    .option(...dirOption)
    .option("--json", "print the status as JSON on stdout")
    .action(async (lab: string | undefined, opts: { dir?: string; json?: boolean }) => {
      const open = await openLab({ cwd: ctx.cwd, lab, dir: opts.dir });
      const status = await (await ops()).labStatus(open, { env: ctx.env });
      if (opts.json) printJson(ctx, status);
      else printStatus(ctx, status);
      if (!status.healthy) {
        const vmsDown = open.plan.nodes.some(
          (n) => status.machines.find((m) => m.name === n.name)?.state !== "running",
        );
        throw new K8slabError(
          `lab ${status.lab} is not healthy: ${status.problems.length} problem${status.problems.length === 1 ? "" : "s"}${opts.json ? "" : " (listed above)"}`,
          vmsDown && open.lab.provider.name === "ssh"
            ? { hint: `k8slab doctor ${lab ?? open.lab.name} says why, node by node` }
            : vmsDown
              ? {
                  hint: `boot and provision its VMs: ${createCommandFor(ctx, lab, open)}`,
                }
              : {
                  hint: `every Vagrant run is logged in ${join(open.dir, "logs")}; k8slab provision --phase <phase> runs a phase again`,
                },
        );
      }
    });
}

/** The create command for a lab given as `ref` (a name, a file, or its directory). */
function createCommandFor(ctx: CliContext, ref: string | undefined, open: OpenLab): string {
  const lab = ref && resolve(ctx.cwd, ref) !== open.dir ? ref : open.lab.name;
  return `k8slab create ${lab} --dir ${open.dir}`;
}

function printStatus(ctx: CliContext, status: LabStatus): void {
  printResult(ctx, `lab ${status.lab} in ${status.dir}`);
  for (const m of status.machines)
    printResult(
      ctx,
      // An SSH lab's nodes are machines, not VMs: `node master: running (ssh)`.
      `  ${m.provider === "ssh" ? "node" : "vm"} ${m.name}: ${m.state}${m.provider ? ` (${m.provider})` : ""}`,
    );
  const stages = Object.keys(status.stages);
  printResult(ctx, `  stages verified: ${stages.length ? stages.join(", ") : "none yet"}`);
  if (status.etcd) {
    printResult(ctx, `  etcd: ${status.etcd.detail}`);
    for (const m of status.etcd.members)
      printResult(ctx, `    member ${m.name} ${m.peerURLs.join(",")}`);
  }
  if (status.nodes) printResult(ctx, `  nodes: ${status.nodes.detail}`);
  if (status.addons) printResult(ctx, `  addons: ${status.addons.detail}`);
  const soon = status.certificates;
  printResult(
    ctx,
    soon.length
      ? `  certificates: ${soon.length} expire within 30 days (first: ${soon[0]!.name} in ${soon[0]!.daysLeft} days); k8slab render re-issues them`
      : "  certificates: none expire within 30 days",
  );
  if (status.problems.length > 0) {
    printResult(ctx, "  problems:");
    for (const p of status.problems) printResult(ctx, `    ${p}`);
  }
}

export function provisionCommand(ctx: CliContext): Command {
  return new Command("provision")
    .description(
      "run one provisioning phase (or every phase, in order) again on every node that has it",
    )
    .argument(...labArg)
    .option(...dirOption)
    .addOption(new Option("--phase <phase>", "the phase to run").choices(PHASES))
    .action(async (lab: string | undefined, opts: { dir?: string; phase?: Phase }) => {
      const open = await openLab({ cwd: ctx.cwd, lab, dir: opts.dir });
      const { provisionLab } = await ops();
      const { ran } = await untilInterrupted(RESUMABLE, (signal) =>
        provisionLab(open, {
          env: ctx.env,
          phase: opts.phase,
          createCommand: createCommandFor(ctx, lab, open),
          signal,
          onLine: (line) => say(ctx, `    ${line}`),
        }),
      );
      for (const r of ran) say(ctx, `${r.node}: ran ${r.provisioners.join(", ")}`);
    });
}

export function sshCommand(ctx: CliContext): Command {
  return new Command("ssh")
    .description("open a shell on a node (vagrant ssh), or run a command there with -c")
    .argument("<node>", "node name, e.g. master")
    .option(...dirOption)
    .option("-c, --command <command>", "run this command instead of a shell")
    .action(async (node: string, opts: { dir?: string; command?: string }) => {
      const open = await openLab({ cwd: ctx.cwd, dir: opts.dir });
      if (!open.plan.nodes.some((n) => n.name === node)) {
        throw new K8slabError(`no node ${JSON.stringify(node)} in lab ${open.lab.name}`, {
          exitCode: 2,
          hint: `nodes: ${open.plan.nodes.map((n) => n.name).join(", ")}`,
        });
      }
      const vagrant = (await ops()).labMachines(open, { env: ctx.env });
      // Vagrant's (or ssh's) exit status is k8slab's: the remote command's, or its own failure.
      const code = opts.command
        ? await vagrant.sshStream(node, opts.command, { stdout: ctx.stdout, stderr: ctx.stderr })
        : await vagrant.sshInteractive(node);
      if (code !== 0) {
        const tool = vagrant.kind === "ssh" ? "ssh" : "vagrant ssh";
        const owner = vagrant.kind === "ssh" ? "ssh's (255)" : "Vagrant's";
        throw new K8slabError(
          `${tool} ${node}${opts.command ? ` -c ${shellQuote(opts.command)}` : ""} exited with code ${code}`,
          {
            exitCode: code,
            hint: opts.command
              ? `that is the command's exit status, or ${owner} when it could not reach ${node} (is it running? k8slab status)`
              : `is ${node} running? k8slab status`,
          },
        );
      }
    });
}

export function kubeconfigCommand(ctx: CliContext): Command {
  return new Command("kubeconfig")
    .description(
      "print the lab's admin kubeconfig path and the export KUBECONFIG= line; --merge adds it to yours",
    )
    .argument(...labArg)
    .option(...dirOption)
    .option(
      "--merge",
      "add the lab's cluster, user and context to your kubeconfig (a backup is kept)",
    )
    .action(async (lab: string | undefined, opts: { dir?: string; merge?: boolean }) => {
      const open = await openLab({ cwd: ctx.cwd, lab, dir: opts.dir });
      const path = join(open.dir, "pki", "admin.kubeconfig");
      if (!opts.merge) {
        printResult(ctx, path);
        printResult(ctx, `export KUBECONFIG=${path}`);
        return;
      }
      const { readState } = await import("../../converge/state.js");
      const { mergeKubeconfig, userKubeconfigPath } = await import("../../lifecycle/kubeconfig.js");
      const { state } = await readState(open.dir, open.lab.name);
      if (Object.keys(state.stages).length === 0) {
        say(
          ctx,
          `warning: lab ${open.lab.name} has no verified stage (state.json): its cluster was never created, or was destroyed; the context reaches nothing until ${createCommandFor(ctx, lab, open)}`,
        );
      }
      const merged = await mergeKubeconfig(path, userKubeconfigPath(ctx.env), {
        lab: open.lab.name,
      });
      say(
        ctx,
        `added context ${merged.context} to ${merged.target}${merged.backup ? ` (backup: ${merged.backup})` : ""}`,
      );
      say(ctx, `kubectl --context ${merged.context} get nodes`);
    });
}

async function confirm(ctx: CliContext, question: string): Promise<boolean> {
  if (!process.stdin.isTTY || !ctx.interactive) {
    throw new K8slabError("destroy needs confirmation and there is no terminal to ask", {
      hint: "run it with --force",
      exitCode: 2,
    });
  }
  const rl = createInterface({ input: process.stdin, output: ctx.stderr });
  try {
    return /^y(es)?$/i.test((await rl.question(`${question} [y/N] `)).trim());
  } finally {
    rl.close();
  }
}

export function destroyCommand(ctx: CliContext): Command {
  return new Command("destroy")
    .description("destroy every VM of a lab; the PKI is kept unless --purge")
    .argument(...labArg)
    .option(...dirOption)
    .option("-f, --force", "do not ask")
    .option("--purge", "also delete the lab directory with its PKI and logs")
    .action(
      async (lab: string | undefined, opts: { dir?: string; force?: boolean; purge?: boolean }) => {
        const { findLabDir } = await import("../../lifecycle/open-lab.js");
        const dir = await findLabDir({ cwd: ctx.cwd, lab, dir: opts.dir });
        if (!existsSync(dir)) {
          // Idempotent, like kind delete cluster: what does not exist is already destroyed.
          say(ctx, `nothing to destroy: there is no lab directory ${dir}`);
          return;
        }
        const open = await openLab({ cwd: ctx.cwd, lab, dir: opts.dir });
        const ssh = open.lab.provider.name === "ssh";
        if (ssh && !opts.purge) {
          const { sshDestroyRefusal } = await import("../../ssh/ssh-machines.js");
          throw sshDestroyRefusal(open.lab.name);
        }
        const what = ssh
          ? `delete ${open.dir} (its PKI, state and logs; the machines of lab ${open.lab.name} stay as they are)?`
          : `destroy the ${open.plan.nodes.length} VMs of lab ${open.lab.name}${opts.purge ? ` and delete ${open.dir}` : ""}?`;
        if (!opts.force && !(await confirm(ctx, what))) {
          say(ctx, "nothing destroyed");
          return;
        }
        const { destroyLab } = await ops();
        const { vms } = await destroyLab(open, { env: ctx.env, purge: opts.purge ?? false });
        if (ssh) {
          say(ctx, `deleted ${open.dir}; the machines of lab ${open.lab.name} are as they were`);
          return;
        }
        say(
          ctx,
          `${vms ? "destroyed" : "no VM of"} lab ${open.lab.name}${vms ? "" : " was created"}${opts.purge ? `; deleted ${open.dir}` : `; the PKI stays in ${join(open.dir, "pki")}`}`,
        );
      },
    );
}

export function doctorCommand(ctx: CliContext): Command {
  return new Command("doctor")
    .description(
      "check the host: Vagrant, the provider, VirtualBox's host-only range, RAM, CPUs, disk and routes; for an SSH lab, each node's login, sudo, architecture, cgroups and kernel",
    )
    .argument("[lab]", "check against this lab's needs (default: three-node)")
    .addOption(
      new Option("--provider <provider>", "provider to check (default: the lab's)").choices(
        PROVIDERS,
      ),
    )
    .option("-d, --dir <dir>", "where the lab directory goes (for the disk check)")
    .option("--json", "print the checks as JSON on stdout")
    .action(
      async (
        ref: string | undefined,
        opts: { provider?: Lab["provider"]["name"]; dir?: string; json?: boolean },
      ) => {
        const { loadLab } = await import("../../lab/load.js");
        const { runDoctor } = await import("../../doctor/doctor.js");
        const { lab } = await loadLab(ref ?? "three-node", { cwd: ctx.cwd });
        const provider = opts.provider ?? lab.provider.name;
        // An SSH lab's checks trust the host keys its lab directory recorded (known_hosts).
        const { findLabDir } = await import("../../lifecycle/open-lab.js");
        const dir =
          provider === "ssh"
            ? await findLabDir({ cwd: ctx.cwd, lab: ref ?? "three-node", dir: opts.dir })
            : (opts.dir ?? ctx.cwd);
        const items = await runDoctor({ lab, provider, dir });
        if (opts.json) printJson(ctx, { checks: items });
        else {
          for (const i of items) {
            printResult(
              ctx,
              `${i.verdict.toUpperCase().padEnd(4)} ${i.name}: ${i.detail}${i.hint ? `\n     hint: ${i.hint}` : ""}`,
            );
          }
        }
        const failing = items.filter((i) => i.verdict === "fail");
        if (failing.length > 0) {
          throw new K8slabError(
            `${failing.length} check${failing.length === 1 ? "" : "s"} failed: ${failing.map((f) => f.name).join(", ")}`,
          );
        }
      },
    );
}
