import { relative } from "node:path";
import { Command } from "commander";
import { writeFlashConfig } from "../../hypriot/flash-config.js";
import { formatProblem } from "../../lab/problems.js";
import { printJson, printResult, say, type CliContext } from "../context.js";

export function flashConfigCommand(ctx: CliContext): Command {
  return new Command("flash-config")
    .description(
      "write cloud-init user-data and meta-data for every board of a Pi cluster lab and an Ansible inventory; print the flash command for each board",
    )
    .argument(
      "<lab>",
      "a built-in Pi cluster lab (pi-cluster) or a path to a lab file with kind: pi-cluster",
    )
    .requiredOption(
      "-o, --out <dir>",
      "directory for <hostname>/user-data, <hostname>/meta-data and the inventory",
    )
    .option("--image <file>", "the image the flash commands write (default: the lab's image)")
    .option("--json", "print the result as JSON on stdout")
    .action(async (ref: string, opts: { out: string; image?: string; json?: boolean }) => {
      const result = await writeFlashConfig({
        lab: ref,
        cwd: ctx.cwd,
        out: opts.out,
        ...(opts.image !== undefined ? { image: opts.image } : {}),
      });
      if (opts.json) {
        const { lab, labFile, out, inventory, boards, warnings } = result;
        return printJson(ctx, { name: lab.name, labFile, out, inventory, boards, warnings });
      }
      for (const w of result.warnings) say(ctx, formatProblem(w));
      const shown = relative(ctx.cwd, result.out) || ".";
      say(
        ctx,
        `wrote cloud-init files for ${result.boards.length} boards and the inventory ${relative(ctx.cwd, result.inventory)} into ${shown}`,
      );
      say(ctx, "flash each SD card (one command per board):");
      for (const b of result.boards) printResult(ctx, b.flash);
      say(
        ctx,
        `then: ansible -u ${result.lab.user.name} -i ${relative(ctx.cwd, result.inventory)} -m ping all`,
      );
    });
}
