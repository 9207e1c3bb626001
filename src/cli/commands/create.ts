import { relative } from "node:path";
import { Command, Option } from "commander";
import type { CreateOptions } from "../../converge/converge.js";
import { STAGE_NAMES, type StageName } from "../../converge/stage-names.js";
import { VAGRANT_PROVIDERS, type VagrantProviderName } from "../../lab/providers.js";
import { printJson, say, type CliContext } from "../context.js";
import { untilInterrupted } from "../interrupt.js";

/** Tuning for slow laptops (and tests): K8SLAB_DEADLINE_SCALE=2 doubles every stage deadline. */
function tuning(env: NodeJS.ProcessEnv): Pick<CreateOptions, "deadlineScale" | "pollMs"> {
  const scale = Number(env.K8SLAB_DEADLINE_SCALE);
  const poll = Number(env.K8SLAB_POLL_MS);
  return {
    ...(scale > 0 ? { deadlineScale: scale } : {}),
    ...(poll > 0 ? { pollMs: poll } : {}),
  };
}

/** What an interrupted create or provision says: finished work is kept. */
export const RESUMABLE = {
  message: "interrupted; finished stages are kept in state.json",
  hint: "run the same command again to continue where it stopped",
};

export function createCommand(ctx: CliContext): Command {
  return new Command("create")
    .description(
      "render the lab and its PKI, boot the VMs and provision them stage by stage until etcd has quorum, the network exists, the API server answers, every node is Ready and the addons run; a second run continues where the last one stopped",
    )
    .argument("<lab>", "a built-in lab name (see `k8slab labs`) or a path to a lab file")
    .option("-d, --dir <dir>", "lab directory (default: ./<lab name>)")
    .addOption(
      new Option(
        "--provider <provider>",
        "Vagrant provider (default: the lab's; not for a lab whose provider is ssh)",
      ).choices(VAGRANT_PROVIDERS),
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
          provider?: VagrantProviderName;
          until?: StageName;
          verbose?: boolean;
          json?: boolean;
        },
      ) => {
        const { createLab } = await import("../../converge/converge.js");
        const { lineReporter, withTaskList } = await import("../progress.js");
        const result = await untilInterrupted(RESUMABLE, (signal) => {
          const options = (onEvent: CreateOptions["onEvent"]): CreateOptions => ({
            lab: ref,
            cwd: ctx.cwd,
            dir: opts.dir,
            provider: opts.provider,
            until: opts.until,
            env: ctx.env,
            signal,
            interactive: ctx.interactive,
            ...tuning(ctx.env),
            ...(onEvent ? { onEvent } : {}),
          });
          return ctx.interactive && !opts.verbose
            ? withTaskList(ctx, opts.until ?? "addons", (onEvent) => createLab(options(onEvent)))
            : createLab(options(lineReporter(ctx, opts.verbose)));
        });
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
        // The control-plane node is Vagrant's primary machine: plain `vagrant ssh` goes there.
        say(
          ctx,
          result.provider === "ssh"
            ? `k8slab ssh <node> --dir ${shown}`
            : `cd ${shown} && vagrant ssh   # or: k8slab ssh <node> --dir ${shown}`,
        );
      },
    );
}
