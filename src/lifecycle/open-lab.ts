import { stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { z } from "zod";
import { K8slabError } from "../errors.js";
import { readJsonFile } from "../lab-dir/json-file.js";
import { loadLab } from "../lab/load.js";
import { labSchema, type Lab } from "../lab/schema.js";
import { planLab, type LabPlan } from "../plan/plan.js";
import { LAB_JSON, labOfPki, repairCommand } from "../render/lab-dir.js";

export interface OpenLab {
  dir: string;
  lab: Lab;
  plan: LabPlan;
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

export interface LabDirOptions {
  cwd: string;
  lab?: string | undefined;
  dir?: string | undefined;
}

/**
 * Where a lab's directory is, whether or not it exists: --dir, else the lab given when it is a
 * lab directory, else ./<lab name> for a lab given by name or file, else the current directory.
 */
export async function findLabDir(options: LabDirOptions): Promise<string> {
  if (options.dir) return resolve(options.cwd, options.dir);
  if (!options.lab) return resolve(options.cwd);
  const candidate = resolve(options.cwd, options.lab);
  if ((await isDir(candidate)) && (await isDir(join(candidate, "pki")))) return candidate;
  return resolve(options.cwd, (await loadLab(options.lab, { cwd: options.cwd })).lab.name);
}

/**
 * Find a rendered lab directory: --dir, else ./<lab name> for a lab given by name or file,
 * else the current directory when it is one.
 */
export async function openLab(options: LabDirOptions): Promise<OpenLab> {
  const dir = await findLabDir(options);
  const file = join(dir, LAB_JSON);
  const labRef = options.lab ?? (await labOfPki(dir));
  const fix = labRef
    ? `rebuild it, keeping the PKI: ${repairCommand(labRef, dir)}`
    : `rebuild it, keeping the PKI, from the lab file (or built-in lab) you rendered it from: ${repairCommand("LAB", dir)}`;
  const saved = await readJsonFile(file, z.object({ lab: z.unknown() }), {
    what: "the rendered lab",
    fix,
  });
  if (saved === undefined) {
    throw new K8slabError(`${dir} is not a k8slab lab directory (no lab.json)`, {
      hint: options.lab
        ? `create it with: k8slab create ${options.lab}${options.dir ? ` --dir ${options.dir}` : ""}`
        : "run it inside a lab directory, or give the lab or --dir; create one with: k8slab create three-node (k8slab labs lists the others)",
      exitCode: 2,
    });
  }
  const parsed = labSchema.safeParse(saved.lab);
  if (!parsed.success) {
    throw new K8slabError(`${file} does not hold a valid lab`, { hint: fix });
  }
  return { dir, lab: parsed.data, plan: planLab(parsed.data) };
}
