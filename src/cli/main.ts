import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Command, CommanderError } from "commander";
import { packageRoot } from "../util/package-root.js";
import { isK8slabError } from "../errors.js";
import { defaultContext, say, type CliContext } from "./context.js";
import { buildHypriotImageCommand } from "./commands/build-hypriot-image.js";
import { cacheCommand } from "./commands/cache.js";
import { createCommand } from "./commands/create.js";
import {
  destroyCommand,
  doctorCommand,
  kubeconfigCommand,
  provisionCommand,
  sshCommand,
  statusCommand,
} from "./commands/lifecycle.js";
import { flashConfigCommand } from "./commands/flash-config.js";
import { labsCommand } from "./commands/labs.js";
import { renderCommand } from "./commands/render.js";
import { validateCommand } from "./commands/validate.js";

export const EXIT = { ok: 0, failed: 1, usage: 2, bug: 70 } as const;

export function buildProgram(ctx: CliContext): Command {
  const program = new Command("k8slab")
    .description(
      "Hand-assembled Kubernetes labs on your laptop: render a readable Vagrantfile, provisioners and PKI from one lab file, and drive Vagrant until the cluster is ready.",
    )
    .version(packageVersion(), "-V, --version")
    .showHelpAfterError("(run with --help for usage)")
    .configureOutput({
      writeOut: (s) => ctx.stdout.write(s),
      writeErr: (s) => ctx.stderr.write(s),
    })
    .exitOverride();
  for (const make of [
    createCommand,
    labsCommand,
    validateCommand,
    renderCommand,
    statusCommand,
    provisionCommand,
    sshCommand,
    kubeconfigCommand,
    destroyCommand,
    doctorCommand,
    cacheCommand,
    buildHypriotImageCommand,
    flashConfigCommand,
  ]) {
    const command = make(ctx);
    inheritSettings(command, program);
    program.addCommand(command);
  }
  return program;
}

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as {
    version: string;
  };
  return pkg.version;
}

/** Output, exit override and help settings reach nested commands (`cache pull`) too. */
function inheritSettings(command: Command, parent: Command): void {
  command.copyInheritedSettings(parent);
  for (const sub of command.commands) inheritSettings(sub, command);
}

/** Run the CLI and return the exit code; the only place that decides exit codes. */
export async function runCli(
  argv: readonly string[],
  ctx: CliContext = defaultContext(),
): Promise<number> {
  const program = buildProgram(ctx);
  try {
    await program.parseAsync([...argv], { from: "user" });
    return EXIT.ok;
  } catch (error) {
    if (error instanceof CommanderError) {
      if (
        error.code === "commander.helpDisplayed" ||
        error.code === "commander.version" ||
        error.exitCode === 0
      ) {
        return EXIT.ok;
      }
      return EXIT.usage;
    }
    if (isK8slabError(error)) {
      say(ctx, `error: ${error.message}`);
      if (error.hint) say(ctx, `hint: ${error.hint}`);
      return error.exitCode;
    }
    const stack = error instanceof Error ? (error.stack ?? error.message) : String(error);
    say(
      ctx,
      `k8slab hit a bug:\n${stack}\nplease report it with the command you ran and this output`,
    );
    return EXIT.bug;
  }
}

export async function main(): Promise<void> {
  process.exitCode = await runCli(process.argv.slice(2));
}
