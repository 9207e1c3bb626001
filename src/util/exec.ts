import { execa, type Options as ExecaOptions } from "execa";
import { CommandFailedError, K8slabError } from "../errors.js";
import { shellQuote } from "./quote.js";

/** The lines of output kept in an error when a command fails. */
export const TAIL_LINES = 30;

export interface RunOptions {
  cwd?: string;
  env?: Record<string, string | undefined>;
  /** Feed this to the command's standard input. */
  input?: string;
  /** Milliseconds before the command is killed. */
  timeoutMs?: number;
  /** Called with every line the command prints (stdout and stderr interleaved). */
  onLine?: (line: string) => void;
  signal?: AbortSignal;
  /** Extra text for the hint when the program is missing. */
  missingHint?: string;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

/** A function that runs one external program. Core code takes one so tests can swap the edge. */
export type Runner = (
  file: string,
  args: readonly string[],
  options?: RunOptions,
) => Promise<RunResult>;

export function tail(text: string, lines = TAIL_LINES): string {
  const all = text.replace(/\r\n/g, "\n").trimEnd().split("\n");
  return all.slice(-lines).join("\n");
}

export function formatCommand(file: string, args: readonly string[]): string {
  return [file, ...args].map(shellQuote).join(" ");
}

/**
 * Run a program and return its output; a failure becomes one CommandFailedError carrying the
 * command, its exit code or signal and the tail of its output.
 */
export const runCommand: Runner = async (file, args, options = {}) => {
  const execaOptions: ExecaOptions = {
    cwd: options.cwd,
    env: options.env,
    extendEnv: true,
    input: options.input,
    timeout: options.timeoutMs,
    cancelSignal: options.signal,
    reject: false,
    all: true,
    stripFinalNewline: true,
    forceKillAfterDelay: 5_000,
    ...(options.onLine
      ? {
          stdout: ["pipe", lineSink(options.onLine)],
          stderr: ["pipe", lineSink(options.onLine)],
        }
      : {}),
  };
  const result = await execa(file, [...args], execaOptions);
  const command = formatCommand(file, args);
  const stdout = String(result.stdout ?? "");
  const stderr = String(result.stderr ?? "");
  if (result.failed) {
    const code = (result as { code?: string }).code;
    if (code === "ENOENT") {
      throw new K8slabError(`${file} was not found on PATH`, {
        hint: options.missingHint ?? `install ${file}, then try again`,
        cause: result,
      });
    }
    throw new CommandFailedError({
      command,
      exitCode: result.exitCode,
      signal: result.signal,
      outputTail: tail(String(result.all ?? `${stdout}\n${stderr}`)),
      hint: result.timedOut ? `it did not finish within ${options.timeoutMs} ms` : undefined,
      timedOut: result.timedOut,
      cause: result,
    });
  }
  return { stdout, stderr, exitCode: result.exitCode ?? 0 };
};

function lineSink(onLine: (line: string) => void) {
  return function* (line: unknown) {
    onLine(String(line));
    yield line;
  };
}
