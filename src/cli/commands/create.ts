import { relative } from "node:path";
import { Command, Option } from "commander";
import { createLab, type CreateOptions } from "../../converge/converge.js";
import { STAGE_NAMES, type StageName } from "../../converge/stages.js";
import { K8slabError } from "../../errors.js";
import { PROVIDERS } from "../../lab/schema.js";
import { printJson, say, type CliContext } from "../context.js";
import { lineReporter, withTaskList } from "../progress.js";

/** Tuning for slow laptops (and tests): K8SLAB_DEADLINE_SCALE=2 doubles every stage deadline. */
function tuning(env: NodeJS.ProcessEnv): Pick<CreateOptions, "deadlineScale" | "pollMs"> {
  const scale = Number(env.K8SLAB_DEADLINE_SCALE);
  const poll = Number(env.K8SLAB_POLL_MS);
  return {
    ...(scale > 0 ? { deadlineScale: scale } : {}),
    ...(poll > 0 ? { pollMs: poll } : {}),
  };
}

/** Ctrl-C stops child processes through an AbortSignal; state.json holds only finished stages. */
export function abortOnSigint(): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const onSignal = () =>
    controller.abort(
      new K8slabError("interrupted; finished stages are kept in state.json", {
        exitCode: 130,
        hint: "run the same command again to continue where it stopped",
      }),
    );
  // `on`, not `once`: execa's exit hook re-raises the signal when it sees no other listener.
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  return {
    signal: controller.signal,
    dispose: () => {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    },
  };
}

/** Whatever a cancelled child or timer throws, an interrupted run reports the interruption. */
export async function interruptible<T>(signal: AbortSignal, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (signal.aborted) throw signal.reason;
    throw error;
  }
}

export function createCommand(ctx: CliContext): Command {
  return new Command("create")
    .description(
      "render the lab and its PKI, boot the VMs and provision them stage by stage until etcd has quorum, the network exists, the API server answers, every node is Ready and the addons run; a second run continues where the last one stopped",
    )
    .argument("<lab>", "a built-in lab name (see `k8slab labs`) or a path to a lab file")
    .option("-d, --dir <dir>", "lab directory (default: ./<lab name>)")
    .addOption(
      new Option("--provider <provider>", "Vagrant provider (default: the lab's)").choices(
        PROVIDERS,
      ),
    )
    .addOption(
      new Option(
        "--until <stage>",
        "stop once this stage is verified (assemble the rest by hand)",
      ).choices(STAGE_NAMES),
    )
    .option("-v, --verbose", "show Vagrant's output as it comes (it is always in logs/)")
    .option("--json", "print one machine-readable result on stdout")
    .action(
      async (
        ref: string,
        opts: {
          dir?: string;
          provider?: "virtualbox" | "libvirt";
          until?: StageName;
          verbose?: boolean;
          json?: boolean;
        },
      ) => {
        const { signal, dispose } = abortOnSigint();
        const options = (onEvent: CreateOptions["onEvent"]): CreateOptions => ({
          lab: ref,
          cwd: ctx.cwd,
          dir: opts.dir,
          provider: opts.provider,
          until: opts.until,
          env: ctx.env,
          signal,
          ...tuning(ctx.env),
          ...(onEvent ? { onEvent } : {}),
        });
        try {
          const result = await interruptible(signal, () =>
            ctx.interactive && !opts.verbose
              ? withTaskList(ctx, opts.until ?? "addons", (onEvent) => createLab(options(onEvent)))
              : createLab(options(lineReporter(ctx, opts.verbose))),
          );
          if (opts.json) return printJson(ctx, result);
          const shown = relative(ctx.cwd, result.dir) || ".";
          const done = result.stages.map(
            (s) => `${s.stage} ${s.status === "skipped" ? "(already done)" : "ok"}`,
          );
          say(ctx, `lab ${result.lab}: ${done.join(", ")}`);
          if (!result.complete)
            say(
              ctx,
              `stopped after ${opts.until}; continue with: k8slab create ${ref}${opts.dir ? ` --dir ${opts.dir}` : ""}`,
            );
          say(ctx, `export KUBECONFIG=${result.kubeconfig}`);
          say(
            ctx,
            `cd ${shown} && vagrant ssh ${"master"}   # or: k8slab ssh <node> --dir ${shown}`,
          );
        } finally {
          dispose();
        }
      },
    );
}
