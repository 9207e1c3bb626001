import { randomBytes } from "node:crypto";
import { readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";

/**
 * state.json: what `create` has verified, so a later run continues from there.
 * - `phases`: per node, each phase that succeeded there, with the digest of what ran (the script,
 *   and for pki the node's bundle). A phase whose rendered input changed runs again.
 * - `stages`: each stage whose check held while every one of its phases had succeeded on every
 *   node that has it.
 */
const phaseRecord = z.object({ at: z.string(), digest: z.string() });
const stageRecord = z.object({
  verifiedAt: z.string(),
  detail: z.string(),
  passes: z.number().int(),
});
const stateSchema = z.object({
  version: z.union([z.literal(1), z.literal(2)]),
  lab: z.string(),
  phases: z.record(z.string(), z.record(z.string(), phaseRecord)).default({}),
  stages: z.record(z.string(), stageRecord),
});
export type LabState = Omit<z.infer<typeof stateSchema>, "version"> & { version: 2 };

export function statePath(labDir: string): string {
  return join(labDir, "state.json");
}

export function emptyState(labName: string): LabState {
  return { version: 2, lab: labName, phases: {}, stages: {} };
}

export interface ReadStateResult {
  state: LabState;
  /** Why the file on disk was not used (corrupt, another lab's), when it was not. */
  problem?: string;
}

/**
 * The lab's state; a missing file is a fresh start. A file that cannot be used is never silently
 * dropped: the caller is told why, and with `setAside` (create, which writes a new one) it is
 * moved to state.json.corrupt-<time>.
 */
export async function readState(
  labDir: string,
  labName: string,
  options: { setAside?: boolean } = {},
): Promise<ReadStateResult> {
  let text: string;
  try {
    text = await readFile(statePath(labDir), "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return { state: emptyState(labName) };
    throw error;
  }
  let problem: string;
  try {
    const parsed = stateSchema.safeParse(JSON.parse(text));
    if (parsed.success && parsed.data.lab === labName) {
      return { state: { ...parsed.data, version: 2 } };
    }
    problem = parsed.success
      ? `it belongs to lab ${JSON.stringify(parsed.data.lab)}, not ${JSON.stringify(labName)}`
      : `it does not have the expected shape (${parsed.error.issues[0]?.message ?? "invalid"})`;
  } catch (error) {
    problem = `it is not valid JSON (${(error as Error).message.split("\n")[0]})`;
  }
  if (!options.setAside) {
    return { state: emptyState(labName), problem: `state.json could not be used: ${problem}` };
  }
  const aside = `${statePath(labDir)}.corrupt-${new Date().toISOString().replace(/[:.]/g, "-")}`;
  await rename(statePath(labDir), aside);
  return {
    state: emptyState(labName),
    problem: `state.json could not be used: ${problem}; it was moved to ${aside} and every stage will be checked again`,
  };
}

/** Written whole and renamed into place: an interrupted run never leaves half a file. */
export async function writeState(labDir: string, state: LabState): Promise<void> {
  const tmp = `${statePath(labDir)}.${randomBytes(4).toString("hex")}`;
  await writeFile(tmp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o644 });
  await rename(tmp, statePath(labDir));
}
