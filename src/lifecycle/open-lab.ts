import { readFile, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { K8slabError } from "../errors.js";
import { loadLab } from "../lab/load.js";
import { labSchema, type Lab } from "../lab/schema.js";
import { planLab, type LabPlan } from "../plan/plan.js";

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

/**
 * Find a rendered lab directory: --dir, else ./<lab name> for a lab given by name or file,
 * else the current directory when it is one.
 */
export async function openLab(options: {
  cwd: string;
  lab?: string | undefined;
  dir?: string | undefined;
}): Promise<OpenLab> {
  let dir: string;
  if (options.dir) dir = resolve(options.cwd, options.dir);
  else if (options.lab) {
    const candidate = resolve(options.cwd, options.lab);
    dir =
      (await isDir(candidate)) && (await isDir(join(candidate, "pki")))
        ? candidate
        : resolve(options.cwd, (await loadLab(options.lab, { cwd: options.cwd })).lab.name);
  } else dir = resolve(options.cwd);
  let raw: string;
  try {
    raw = await readFile(join(dir, "lab.json"), "utf8");
  } catch {
    throw new K8slabError(`${dir} is not a k8slab lab directory (no lab.json)`, {
      hint: "run it inside a lab directory, or give the lab or --dir; create one with: k8slab create <lab>",
      exitCode: 2,
    });
  }
  const parsed = labSchema.safeParse((JSON.parse(raw) as { lab?: unknown }).lab);
  if (!parsed.success) {
    throw new K8slabError(`${join(dir, "lab.json")} does not hold a valid lab`, {
      hint: "render the lab again: k8slab render <lab> --dir " + dir,
    });
  }
  return { dir, lab: parsed.data, plan: planLab(parsed.data) };
}
