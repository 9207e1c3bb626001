import { resolve } from "node:path";
import { loadLab, type LoadedLab } from "../lab/load.js";
import type { Problem } from "../lab/problems.js";
import type { Lab } from "../lab/schema.js";
import { ensurePki, type PkiResult } from "../pki/index.js";
import { pkiTopology, planLab, type LabPlan } from "../plan/plan.js";
import { explainDiskErrors } from "../lab-dir/disk-errors.js";
import { withLabLock } from "../lab-dir/lock.js";
import { checkLabDir, removeLeftovers, writeLabDir } from "./lab-dir.js";
import { renderLab } from "./render.js";

export interface RenderOptions {
  /** Built-in lab name or path to a lab file. */
  lab: string;
  cwd: string;
  /** Lab directory; default ./<lab name>. */
  dir?: string | undefined;
  /** Rebuild a corrupt lab.json (and the rendered files), keeping the PKI. */
  repair?: boolean | undefined;
  now?: Date;
  /** The lab, when the caller loaded it already. */
  loaded?: LoadedLab;
}

export interface RenderResult {
  dir: string;
  lab: Lab;
  plan: LabPlan;
  labFile: string;
  files: string[];
  pki: PkiResult;
  warnings: Problem[];
}

export function defaultLabDir(cwd: string, lab: Pick<Lab, "name">, dir?: string): string {
  return resolve(cwd, dir ?? lab.name);
}

/** The lab directory a command on this lab works in (the lab is loaded and validated). */
export async function resolveLabDir(options: Pick<RenderOptions, "lab" | "cwd" | "dir">) {
  const { lab } = await loadLab(options.lab, { cwd: options.cwd });
  return defaultLabDir(options.cwd, lab, options.dir);
}

/**
 * Validate the lab, then write its directory: Vagrantfile, provisioners, lab.json and the PKI,
 * holding the directory's lock (re-entrant: `create` holds it already). An invalid lab throws
 * before anything is written; what a killed render left is cleaned up first.
 */
export async function renderLabDir(options: RenderOptions): Promise<RenderResult> {
  const { lab, file, warnings } =
    options.loaded ?? (await loadLab(options.lab, { cwd: options.cwd }));
  const plan = planLab(lab);
  const dir = defaultLabDir(options.cwd, lab, options.dir);
  const files = await renderLab(plan, { labFile: file });
  let pki: PkiResult | undefined;
  await withLabLock(dir, "render", () =>
    explainDiskErrors(dir, async () => {
      await checkLabDir(dir, lab.name, { repair: options.repair, labRef: options.lab });
      await removeLeftovers(dir);
      await writeLabDir(dir, files, async (target) => {
        pki = await ensurePki(target, pkiTopology(plan), options.now ? { now: options.now } : {});
      });
    }),
  );
  if (!pki) throw new Error("renderLabDir: the PKI step did not run");
  return {
    dir,
    lab,
    plan,
    labFile: file,
    files: files.map((f) => f.path),
    pki: { ...pki, dir: `${dir}/pki` },
    warnings,
  };
}
