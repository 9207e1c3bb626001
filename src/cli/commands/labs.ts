import { Command } from "commander";
import { listBuiltinPiLabs } from "../../hypriot/pi-lab.js";
import { listBuiltinLabs, PI_LAB_KIND } from "../../lab/load.js";
import { printJson, printResult, type CliContext } from "../context.js";

export function labsCommand(ctx: CliContext): Command {
  return new Command("labs")
    .description(
      "list the built-in labs, one line each: VM labs (k8slab create) and Raspberry Pi cluster labs (k8slab flash-config)",
    )
    .option("--json", "print the list as JSON on stdout")
    .action(async (opts: { json?: boolean }) => {
      const vms = (await listBuiltinLabs()).map(({ name, description, nodes }) => ({
        name,
        kind: "vm" as const,
        description,
        nodes,
      }));
      const pis = (await listBuiltinPiLabs()).map(({ name, description, boards }) => ({
        name,
        kind: PI_LAB_KIND,
        description,
        nodes: boards,
      }));
      const labs = [...vms, ...pis];
      if (opts.json) return printJson(ctx, { labs });
      const width = Math.max(...labs.map((l) => l.name.length));
      for (const l of labs) {
        const mark = l.kind === PI_LAB_KIND ? "[Pi boards: k8slab flash-config] " : "";
        printResult(ctx, `${l.name.padEnd(width)}  ${mark}${l.description}`);
      }
    });
}
