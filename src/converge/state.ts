import { randomBytes } from "node:crypto";
import { rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { CorruptFileError, readJsonFile } from "../lab-dir/json-file.js";

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
  const file = statePath(labDir);
  let problem: string;
  try {
    const data = await readJsonFile(file, stateSchema, {
      what: "what create verified",
      fix: "create moves it aside and checks every stage again",
    });
    if (data === undefined) return { state: emptyState(labName) };
    if (data.lab === labName) return { state: { ...data, version: 2 } };
    problem = `${file} belongs to lab ${JSON.stringify(data.lab)}, not ${JSON.stringify(labName)}`;
  } catch (error) {
    if (!(error instanceof CorruptFileError)) throw error;
    problem = error.message;
  }
  if (!options.setAside) return { state: emptyState(labName), problem };
  const aside = `${file}.corrupt-${new Date().toISOString().replace(/[:.]/g, "-")}`;
  await rename(file, aside);
  return {
    state: emptyState(labName),
    problem: `${problem}; it was moved to ${aside} and every stage will be checked again`,
  };
}

/** Written whole and renamed into place: an interrupted run never leaves half a file. */
export async function writeState(labDir: string, state: LabState): Promise<void> {
  const tmp = `${statePath(labDir)}.${randomBytes(4).toString("hex")}`;
  await writeFile(tmp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o644 });
  await rename(tmp, statePath(labDir));
}
