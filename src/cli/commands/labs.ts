import { Command } from "commander";
import { readBuiltinIndex } from "../../lab/builtin-index.js";
import { printJson, printResult, type CliContext } from "../context.js";

export function labsCommand(ctx: CliContext): Command {
  return new Command("labs")
    .description(
      "list the built-in labs, one line each: VM labs (k8slab create) and Raspberry Pi cluster labs (k8slab flash-config)",
    )
    .option("--json", "print the list as JSON on stdout")
    .action(async (opts: { json?: boolean }) => {
      const labs = await readBuiltinIndex();
      if (opts.json) return printJson(ctx, { labs });
      const width = Math.max(...labs.map((l) => l.name.length));
      for (const l of labs) {
        const mark = l.kind === "vm" ? "" : "[Pi boards: k8slab flash-config] ";
        printResult(ctx, `${l.name.padEnd(width)}  ${mark}${l.description}`);
      }
    });
}
