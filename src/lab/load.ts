import { readdir, readFile, stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { K8slabError } from "../errors.js";
import { LabInvalidError, type Problem } from "./problems.js";
import { LAB_RULES } from "./rules.js";
import { labSchema, type Lab } from "./schema.js";
import { validateYamlText } from "./validate-yaml.js";

export interface LoadedLab {
  lab: Lab;
  /** The lab file as the user named it (for messages) and its absolute path. */
  file: string;
  path: string;
  warnings: Problem[];
}

/** The package's own folder (works from src/ under tsx and from dist/ once built). */
export function packageRoot(): string {
  return resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
}

export function builtinLabsDir(): string {
  return join(packageRoot(), "labs");
}

/** A built-in lab name (`three-node`) or a path to a lab file. */
export async function resolveLabFile(
  ref: string,
  cwd: string,
): Promise<{ file: string; path: string }> {
  const looksLikePath = ref.includes("/") || ref.includes("\\") || /\.ya?ml$/i.test(ref);
  const local = resolve(cwd, ref);
  if (looksLikePath || (await isFile(local))) {
    if (!(await isFile(local))) {
      throw new K8slabError(`lab file ${ref} does not exist`, {
        exitCode: 2,
        hint: "give a path to a lab file, or a built-in lab name (see: k8slab labs)",
      });
    }
    return { file: ref, path: local };
  }
  const builtin = join(builtinLabsDir(), `${ref}.yaml`);
  if (/^[a-z0-9-]+$/.test(ref) && (await isFile(builtin)))
    return { file: `${ref}.yaml`, path: builtin };
  const names = (await listBuiltinLabs()).map((l) => l.name);
  throw new K8slabError(`there is no built-in lab called ${JSON.stringify(ref)}`, {
    exitCode: 2,
    hint: `built-in labs: ${names.join(", ")}; or give a path to a lab file`,
  });
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/** Check lab text completely: YAML, schema and cross-field rules, every problem at once. */
export function validateLabText(file: string, text: string): { lab?: Lab; problems: Problem[] } {
  const { value, problems } = validateYamlText(file, text, labSchema, LAB_RULES);
  return value ? { lab: value, problems } : { problems };
}

/** Load a lab (built-in name or path); throws LabInvalidError listing every problem. */
export async function loadLab(ref: string, options: { cwd: string }): Promise<LoadedLab> {
  const { file, path } = await resolveLabFile(ref, options.cwd);
  const text = await readFile(path, "utf8");
  const { lab, problems } = validateLabText(file, text);
  if (!lab) throw new LabInvalidError(file, problems);
  return { lab, file, path, warnings: problems };
}

export interface BuiltinLab {
  name: string;
  description: string;
  nodes: number;
  path: string;
}

export async function listBuiltinLabs(): Promise<BuiltinLab[]> {
  const dir = builtinLabsDir();
  const files = (await readdir(dir)).filter((f) => f.endsWith(".yaml")).sort();
  const labs: BuiltinLab[] = [];
  for (const f of files) {
    const path = join(dir, f);
    const { lab } = validateLabText(f, await readFile(path, "utf8"));
    if (lab)
      labs.push({
        name: basename(f, ".yaml"),
        description: lab.description ?? "",
        nodes: lab.nodes.length,
        path,
      });
  }
  return labs;
}
