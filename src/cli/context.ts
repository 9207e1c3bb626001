import type { Writable } from "node:stream";

/** What a command may touch of the outside world; tests pass their own. */
export interface CliContext {
  cwd: string;
  env: NodeJS.ProcessEnv;
  stdout: Writable;
  stderr: Writable;
  /** True when stderr is a terminal and not CI: progress may redraw lines. */
  interactive: boolean;
}

export function defaultContext(): CliContext {
  return {
    cwd: process.cwd(),
    env: process.env,
    stdout: process.stdout,
    stderr: process.stderr,
    interactive: Boolean(process.stderr.isTTY) && !process.env.CI,
  };
}

/** Progress and messages for people go to stderr; stdout carries results (and --json). */
export function say(ctx: CliContext, text: string): void {
  ctx.stderr.write(text.endsWith("\n") ? text : `${text}\n`);
}

export function printResult(ctx: CliContext, text: string): void {
  ctx.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
}

export function printJson(ctx: CliContext, value: unknown): void {
  ctx.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}
