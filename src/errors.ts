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
  /** Machine-readable facts for the failure object `--json` prints (e.g. `{ stage: "etcd" }`). */
  details?: Record<string, unknown>;
}

export class K8slabError extends Error {
  readonly hint: string | undefined;
  readonly exitCode: number;
  readonly details: Record<string, unknown> | undefined;

  constructor(message: string, options: K8slabErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "K8slabError";
    this.hint = options.hint;
    this.exitCode = options.exitCode ?? 1;
    this.details = options.details;
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

/**
 * What a user error adds to the `--json` failure object: the message, its hint, the problems of an
 * invalid file (file, line, col, path, message, hint each) or of a preflight, the failed command.
 */
export function errorJson(error: K8slabError): Record<string, unknown> {
  const carried = error as K8slabError & { problems?: unknown; failures?: unknown };
  const problems = Array.isArray(carried.problems)
    ? carried.problems
    : Array.isArray(carried.failures)
      ? carried.failures
      : undefined;
  return {
    ...error.details,
    error: error.message,
    ...(error.hint ? { hint: error.hint } : {}),
    ...(problems ? { problems } : {}),
    ...(error instanceof CommandFailedError ? { command: error.command } : {}),
  };
}
