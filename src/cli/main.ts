import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Command, CommanderError } from "commander";
import { errorJson, isK8slabError } from "../errors.js";
import { packageRoot } from "../util/package-root.js";
import { defaultContext, jsonResult, say, type CliContext } from "./context.js";
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
import { resetCommand } from "./commands/reset.js";
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
    resetCommand,
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

/** The command line asks for `--json` (before any `--`); for errors commander finds while parsing. */
function argvWantsJson(argv: readonly string[]): boolean {
  const end = argv.indexOf("--");
  return (end === -1 ? argv : argv.slice(0, end)).includes("--json");
}

/**
 * Run the CLI and return the exit code; the only place that decides exit codes.
 *
 * Under `--json` stdout carries exactly one JSON object, written here once the command is over:
 * `{ "ok": true, ...result }`, or `{ "ok": false, "error", "hint"?, "problems"?, ...partial }` with
 * the human message on stderr as well.
 */
export async function runCli(
  argv: readonly string[],
  outer: CliContext = defaultContext(),
): Promise<number> {
  // A context of this run's own: the result a command records belongs to this run only.
  const ctx: CliContext = { ...outer };
  const program = buildProgram(ctx);
  // Which command runs, and so whether it took --json, is known once commander has parsed it;
  // errors before that (an unknown option, a missing argument) go by the command line.
  let json = argvWantsJson(argv);
  program.hook("preAction", (_program, action) => {
    json = action.opts<{ json?: unknown }>().json === true;
  });
  const finish = (code: number, failure?: Record<string, unknown>): number => {
    const result = jsonResult(ctx);
    if (json || result) {
      const object = failure ? { ok: false, ...result, ...failure } : { ok: true, ...result };
      ctx.stdout.write(`${JSON.stringify(object, null, 2)}\n`);
    }
    return code;
  };
  try {
    await program.parseAsync([...argv], { from: "user" });
    return finish(EXIT.ok);
  } catch (error) {
    if (error instanceof CommanderError) {
      if (
        error.code === "commander.helpDisplayed" ||
        error.code === "commander.version" ||
        error.exitCode === 0
      ) {
        return EXIT.ok; // help and the version are text, even with --json
      }
      // Commander has printed its message to stderr already.
      return finish(EXIT.usage, {
        error: error.message.replace(/^error: /, ""),
        hint: "run with --help for usage",
      });
    }
    if (isK8slabError(error)) {
      say(ctx, `error: ${error.message}`);
      if (error.hint) say(ctx, `hint: ${error.hint}`);
      return finish(error.exitCode, errorJson(error));
    }
    const stack = error instanceof Error ? (error.stack ?? error.message) : String(error);
    say(
      ctx,
      `k8slab hit a bug:\n${stack}\nplease report it with the command you ran and this output`,
    );
    return finish(EXIT.bug, {
      error: `k8slab hit a bug: ${error instanceof Error ? error.message : String(error)}`,
      hint: "please report it with the command you ran and the output on stderr",
    });
  }
}

export async function main(): Promise<void> {
  process.exitCode = await runCli(process.argv.slice(2));
}
