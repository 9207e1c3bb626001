import { constants } from "node:os";
import type { Writable } from "node:stream";
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
  /** Or this file. */
  inputFile?: string;
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
    ...(options.inputFile !== undefined
      ? { inputFile: options.inputFile }
      : { input: options.input }),
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

/**
 * Run a program attached to this process, as a shell runs a foreground job (`k8slab ssh`):
 * standard input is this process's, output goes to `io` (or straight to this process's stdout
 * and stderr), there is no time limit. Ctrl-C reaches it from the terminal (this process waits
 * for it instead of dying first), SIGTERM and SIGHUP are passed on. Resolves with its exit
 * status, or 128 + the signal's number when a signal ended it.
 */
export async function runAttached(
  file: string,
  args: readonly string[],
  options: {
    cwd?: string | undefined;
    env?: Record<string, string | undefined> | undefined;
    io: { stdout: Writable; stderr: Writable };
    signal?: AbortSignal | undefined;
    missingHint: string;
    failedHint: string;
  },
): Promise<number> {
  const { io } = options;
  const direct = (stream: Writable, own: Writable) => (stream === own ? "inherit" : "pipe");
  const child = execa(file, [...args], {
    ...(options.cwd ? { cwd: options.cwd } : {}),
    env: options.env,
    stdin: "inherit",
    stdout: direct(io.stdout, process.stdout),
    stderr: direct(io.stderr, process.stderr),
    buffer: false,
    reject: false,
    ...(options.signal ? { cancelSignal: options.signal } : {}),
  });
  child.stdout?.on("data", (chunk: Buffer) => io.stdout.write(chunk));
  child.stderr?.on("data", (chunk: Buffer) => io.stderr.write(chunk));
  const waitForChild = () => undefined;
  const pass = (signal: NodeJS.Signals) => () => child.kill(signal);
  const onTerm = pass("SIGTERM");
  const onHup = pass("SIGHUP");
  process.on("SIGINT", waitForChild);
  process.on("SIGTERM", onTerm);
  process.on("SIGHUP", onHup);
  try {
    const result = await child;
    if (result.exitCode !== undefined) return result.exitCode;
    if (result.signal) return 128 + (constants.signals[result.signal] ?? 0);
    if ((result as { code?: string }).code === "ENOENT") {
      throw new K8slabError(`${file} was not found on PATH`, { hint: options.missingHint });
    }
    throw new K8slabError(`${formatCommand(file, args)} failed: ${result.shortMessage}`, {
      hint: options.failedHint,
    });
  } finally {
    process.off("SIGINT", waitForChild);
    process.off("SIGTERM", onTerm);
    process.off("SIGHUP", onHup);
  }
}
