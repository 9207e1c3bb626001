import { Command } from "commander";
import { listBuiltinLabs } from "../../lab/load.js";
import { printJson, printResult, type CliContext } from "../context.js";

export function labsCommand(ctx: CliContext): Command {
  return new Command("labs")
    .description("list the built-in labs, one line each")
    .option("--json", "print the list as JSON on stdout")
    .action(async (opts: { json?: boolean }) => {
      const labs = await listBuiltinLabs();
      if (opts.json)
        return printJson(
          ctx,
          labs.map(({ name, description, nodes }) => ({ name, description, nodes })),
        );
      const width = Math.max(...labs.map((l) => l.name.length));
      for (const l of labs) printResult(ctx, `${l.name.padEnd(width)}  ${l.description}`);
    });
}
