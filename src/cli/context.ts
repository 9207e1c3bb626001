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

/** A JSON result: one object (an array would have no room for `ok` and `error`). */
export type JsonResult<T extends object> = T extends readonly unknown[] ? never : T;

const results = new WeakMap<CliContext, object>();

/**
 * Record the command's machine-readable result. Nothing is written here: `runCli` prints exactly
 * one JSON object at the end, `{ "ok": true, ...result }` on success, and on failure
 * `{ "ok": false, "error": ..., "hint": ..., "problems": ..., ...result }` with whatever the
 * command recorded before it failed. A second call replaces the first.
 */
export function printJson<T extends object>(ctx: CliContext, value: JsonResult<T>): void {
  results.set(ctx, value);
}

/** The result a command recorded with printJson, if any (for runCli). */
export function jsonResult(ctx: CliContext): Record<string, unknown> | undefined {
  return results.get(ctx) as Record<string, unknown> | undefined;
}
