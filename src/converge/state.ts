import { randomBytes } from "node:crypto";
import { readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";

/** state.json: which stages of `create` were verified, so a later run continues from there. */
const stateSchema = z.object({
  version: z.literal(1),
  lab: z.string(),
  stages: z.record(
    z.string(),
    z.object({ verifiedAt: z.string(), detail: z.string(), passes: z.number().int() }),
  ),
});
export type LabState = z.infer<typeof stateSchema>;

export function statePath(labDir: string): string {
  return join(labDir, "state.json");
}

export async function readState(labDir: string, labName: string): Promise<LabState> {
  try {
    const parsed = stateSchema.safeParse(JSON.parse(await readFile(statePath(labDir), "utf8")));
    if (parsed.success && parsed.data.lab === labName) return parsed.data;
  } catch {
    // No state yet, or unreadable: start from the beginning.
  }
  return { version: 1, lab: labName, stages: {} };
}

/** Written whole and renamed into place: an interrupted run never leaves half a file. */
export async function writeState(labDir: string, state: LabState): Promise<void> {
  const tmp = `${statePath(labDir)}.${randomBytes(4).toString("hex")}`;
  await writeFile(tmp, `${JSON.stringify(state, null, 2)}\n`);
  await rename(tmp, statePath(labDir));
}
