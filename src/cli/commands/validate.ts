import { Command } from "commander";
import { formatProblem } from "../../lab/problems.js";
import { printJson, say, type CliContext } from "../context.js";

export function validateCommand(ctx: CliContext): Command {
  return new Command("validate")
    .description(
      "check a lab file (a VM lab, or a Raspberry Pi cluster lab with kind: pi-cluster): exit 0 when valid, 2 when not, naming every bad field with its line",
    )
    .argument("<lab>", "a built-in lab name (see `k8slab labs`) or a path to a lab file")
    .option("--json", "print the result as JSON on stdout")
    .action(async (ref: string, opts: { json?: boolean }) => {
      const { loadLab, PI_LAB_KIND, resolveLab } = await import("../../lab/load.js");
      const { kind } = await resolveLab(ref, ctx.cwd);
      if (kind === PI_LAB_KIND) {
        const { loadPiLab } = await import("../../hypriot/pi-lab.js");
        const { lab, file, warnings } = await loadPiLab(ref, { cwd: ctx.cwd });
        const boards = 1 + lab.nodes.length;
        if (opts.json) return printJson(ctx, { valid: true, file, name: lab.name, kind, warnings });
        for (const w of warnings) say(ctx, formatProblem(w));
        say(
          ctx,
          `${file}: Raspberry Pi cluster lab ${lab.name} is valid (${boards} board${boards === 1 ? "" : "s"}); write its SD card files with: k8slab flash-config ${ref} --out DIR`,
        );
        return;
      }
      const { lab, file, warnings } = await loadLab(ref, { cwd: ctx.cwd });
      if (opts.json) return printJson(ctx, { valid: true, file, name: lab.name, kind, warnings });
      for (const w of warnings) say(ctx, formatProblem(w));
      say(
        ctx,
        `${file}: lab ${lab.name} is valid (${lab.nodes.length} node${lab.nodes.length === 1 ? "" : "s"})`,
      );
    });
}
