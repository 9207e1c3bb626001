import { Command } from "commander";
import { K8slabError } from "../../errors.js";
import { printJson, say, type CliContext } from "../context.js";

/**
 * `k8slab reset [lab]`: undo what the phases installed on every node, so the machines can be
 * used again (seed 002's reset.yml), on an SSH lab's machines as on Vagrant VMs. A Vagrant lab's
 * VMs are disposable: `destroy` stays the way to start over, and reset refuses unless --in-place
 * asks to keep the VMs (a slow box to boot).
 */
export function resetCommand(ctx: CliContext): Command {
  return new Command("reset")
    .description(
      "undo what the phases installed on every node (units, files, data, iptables rules, interfaces); the lab directory stays",
    )
    .argument("[lab]", "lab name or file (default: the lab directory you are in)")
    .option("-d, --dir <dir>", "lab directory (default: ./<lab name>, or the current directory)")
    .option("--node <name...>", "only these nodes")
    .option("--in-place", "a Vagrant lab: reset its VMs instead of destroying them")
    .option("--json", "print the result as JSON on stdout")
    .action(
      async (
        lab: string | undefined,
        opts: { dir?: string; node?: string[]; inPlace?: boolean; json?: boolean },
      ) => {
        const { openLab } = await import("../../lifecycle/open-lab.js");
        const open = await openLab({ cwd: ctx.cwd, lab, dir: opts.dir });
        if (open.lab.provider.name !== "ssh" && !opts.inPlace) {
          throw new K8slabError(
            `lab ${open.lab.name} runs on Vagrant VMs: destroy them to start over, or reset them in place with --in-place`,
            {
              exitCode: 2,
              hint: `k8slab destroy ${lab ?? open.lab.name} (the PKI stays; create boots new VMs), or k8slab reset ${lab ?? open.lab.name} --in-place`,
            },
          );
        }
        const { labMachines } = await import("../../lifecycle/ops.js");
        const { resetLab, provisionerResetRunner } = await import("../../reset/reset.js");
        const machines = labMachines(open, { env: ctx.env });
        const result = await resetLab(open, {
          runner: provisionerResetRunner(machines),
          nodes: opts.node,
          onNode: (e) => {
            if (e.status !== "start") say(ctx, `${e.node}: reset ${e.status}`);
          },
        });
        if (opts.json) printJson(ctx, { lab: open.lab.name, dir: open.dir, ...result });
        else say(ctx, `reset ${result.reset.join(", ")}; the lab directory stays in ${open.dir}`);
      },
    );
}
