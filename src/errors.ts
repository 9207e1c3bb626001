/**
 * The two kinds of error k8slab knows.
 *
 * A K8slabError is something the user can act on: it carries a plain message and, where one helps,
 * a hint naming the command or edit that fixes it. The CLI prints it without a stack. Anything else
 * that escapes is a bug and is printed with its stack and a request to report it.
 */
export interface K8slabErrorOptions {
  hint?: string;
  /** Process exit code the CLI uses for this error (default 1). */
  exitCode?: number;
  cause?: unknown;
}

export class K8slabError extends Error {
  readonly hint: string | undefined;
  readonly exitCode: number;

  constructor(message: string, options: K8slabErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "K8slabError";
    this.hint = options.hint;
    this.exitCode = options.exitCode ?? 1;
  }
}

/** An external program failed: the command, how it ended and the tail of what it printed. */
export class CommandFailedError extends K8slabError {
  readonly command: string;
  readonly exitCode: number;
  readonly signal: string | undefined;
  readonly outputTail: string;
  /** It was killed because it ran past its time limit. */
  readonly timedOut: boolean;

  constructor(opts: {
    command: string;
    exitCode?: number | undefined;
    signal?: string | undefined;
    outputTail: string;
    hint?: string | undefined;
    timedOut?: boolean | undefined;
    cause?: unknown;
  }) {
    const how =
      opts.signal !== undefined
        ? `was killed by ${opts.signal}`
        : `exited with code ${opts.exitCode ?? "?"}`;
    const tail = opts.outputTail.trim();
    super(`${opts.command} ${how}${tail ? `\n--- last output ---\n${tail}` : ""}`, {
      hint: opts.hint,
      cause: opts.cause,
    });
    this.name = "CommandFailedError";
    this.command = opts.command;
    this.exitCode = opts.exitCode ?? 1;
    this.signal = opts.signal;
    this.outputTail = tail;
    this.timedOut = opts.timedOut ?? false;
  }
}

export function isK8slabError(error: unknown): error is K8slabError {
  return error instanceof K8slabError;
}
