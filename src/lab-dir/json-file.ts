import { readFile } from "node:fs/promises";
import type { z } from "zod";
import { K8slabError } from "../errors.js";
import { diskError } from "./disk-errors.js";

export interface JsonFileOptions {
  /** What the file is, for the message: "the lab's state file". */
  what: string;
  /** What fixes a corrupt file: "remove it; create re-checks every stage". */
  fix: string;
  /** Exit code of the error (default 1). */
  exitCode?: number;
}

/** A JSON file of a lab directory (or the cache) that is unreadable, truncated or not valid. */
export class CorruptFileError extends K8slabError {
  constructor(
    readonly file: string,
    reason: string,
    options: JsonFileOptions,
    cause: unknown,
  ) {
    super(`${file} (${options.what}) is corrupt: ${reason}`, {
      hint: options.fix,
      cause,
      ...(options.exitCode === undefined ? {} : { exitCode: options.exitCode }),
    });
    this.name = "CorruptFileError";
  }
}

/**
 * Read a JSON file and check it against `schema`: undefined when the file does not exist, the
 * data when it is valid, and a CorruptFileError (never a silent default) when it is empty,
 * truncated, not JSON or not what the schema says.
 */
export async function readJsonFile<S extends z.ZodType>(
  file: string,
  schema: S,
  options: JsonFileOptions,
): Promise<z.infer<S> | undefined> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw diskError(error, file) ?? error;
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    const reason = text.trim() === "" ? "it is empty" : `not JSON (${(error as Error).message})`;
    throw new CorruptFileError(file, reason, options, error);
  }
  const parsed = schema.safeParse(data);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const at = issue?.path.length ? ` at ${issue.path.join(".")}` : "";
    throw new CorruptFileError(
      file,
      `unexpected content${at}: ${issue?.message ?? "invalid"}`,
      options,
      parsed.error,
    );
  }
  return parsed.data;
}
