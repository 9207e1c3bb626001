import { readdir, readFile, stat } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import { K8slabError } from "../errors.js";
import { packageRoot } from "../util/package-root.js";
import { LabInvalidError, type Problem } from "./problems.js";
import { LAB_RULES } from "./rules.js";
import { labSchema, type Lab } from "./schema.js";
import { closest, validateYamlText } from "./validate-yaml.js";

export interface LoadedLab {
  lab: Lab;
  /** The lab file as the user named it (for messages) and its absolute path. */
  file: string;
  path: string;
  warnings: Problem[];
}

export function builtinLabsDir(): string {
  return join(packageRoot(), "labs");
}

/** The `kind:` of a Raspberry Pi cluster lab (src/hypriot/pi-lab.ts); a VM lab has none. */
export const PI_LAB_KIND = "pi-cluster";

/** What a lab file describes: VMs k8slab builds (`vm`), or Raspberry Pi boards to flash. */
export type LabKind = "vm" | typeof PI_LAB_KIND;

export interface LabRef {
  /** The lab file as the user named it (for messages) and its absolute path. */
  file: string;
  path: string;
  kind: LabKind;
}

/** Built-in Pi labs live in labs/pi/ (their own schema.json beside them). */
export function builtinPiLabsDir(): string {
  return join(builtinLabsDir(), "pi");
}

/**
 * Resolve a built-in lab name (`three-node`, `pi-cluster`) or a path to a lab file, and say
 * which kind of lab it is, from its top-level `kind:` line. Every command that takes a lab
 * dispatches on this: `create` and `render` take a Pi lab as the lab of its boards over SSH
 * (loadLab), `validate` checks it with its own schema, `flash-config` refuses a VM lab. The `kind:` line is read with a pattern, not the YAML
 * parser, so a file with a syntax error is still checked against the right schema.
 */
export async function resolveLab(ref: string, cwd: string): Promise<LabRef> {
  const looksLikePath = ref.includes("/") || ref.includes("\\") || /\.ya?ml$/i.test(ref);
  const local = resolve(cwd, ref);
  if (looksLikePath || (await isFile(local))) {
    if (!(await isFile(local))) {
      throw new K8slabError(`lab file ${ref} does not exist`, {
        exitCode: 2,
        hint: "give a path to a lab file, or a built-in lab name (see: k8slab labs)",
      });
    }
    return { file: ref, path: local, kind: await kindOf(local) };
  }
  if (/^[a-z0-9-]+$/.test(ref)) {
    for (const dir of [builtinLabsDir(), builtinPiLabsDir()]) {
      const builtin = join(dir, `${ref}.yaml`);
      if (await isFile(builtin))
        return { file: `${ref}.yaml`, path: builtin, kind: await kindOf(builtin) };
    }
  }
  const names = await builtinLabNames();
  const guess = closest(ref, names);
  throw new K8slabError(
    `there is no built-in lab called ${JSON.stringify(ref)}${guess ? `; did you mean ${guess}?` : ""}`,
    {
      exitCode: 2,
      hint: `built-in labs: ${names.join(", ")} (see: k8slab labs); or give a path to a lab file`,
    },
  );
}

const KIND_LINE = /^kind[ \t]*:[ \t]*(["']?)([^"'#\s]*)\1[ \t]*(?:#.*)?$/m;

async function kindOf(path: string): Promise<LabKind> {
  const text = await readFile(path, "utf8").catch(() => "");
  return KIND_LINE.exec(text)?.[2] === PI_LAB_KIND ? PI_LAB_KIND : "vm";
}

/** The built-in labs' names, VM and Pi, sorted (for messages; nothing is parsed). */
async function builtinLabNames(): Promise<string[]> {
  const names: string[] = [];
  for (const dir of [builtinLabsDir(), builtinPiLabsDir()]) {
    const files = await readdir(dir).catch(() => [] as string[]);
    names.push(...files.filter((f) => f.endsWith(".yaml")).map((f) => basename(f, ".yaml")));
  }
  return names.sort();
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

/**
 * Load a lab (built-in name or path); throws LabInvalidError listing every problem. A Raspberry
 * Pi cluster lab is loaded as the lab of its boards over SSH (src/hypriot/pi-to-lab.ts).
 */
export async function loadLab(ref: string, options: { cwd: string }): Promise<LoadedLab> {
  const { file, path, kind } = await resolveLab(ref, options.cwd);
  if (kind === PI_LAB_KIND) {
    const { loadPiLabAsLab } = await import("../hypriot/pi-to-lab.js");
    return loadPiLabAsLab(ref, options);
  }
  const text = await readFile(path, "utf8");
  const { lab, problems } = validateLabText(file, text);
  if (!lab) throw new LabInvalidError(file, problems);
  return { lab, file, path, warnings: problems };
}

export interface BuiltinLab {
  name: string;
  description: string;
  /** VMs, or boards of a Pi cluster lab. */
  nodes: number;
  path: string;
}

/** The valid labs of a folder of built-in labs, as `validate` reads them, with their size. */
export async function listLabFolder<L extends { description?: string | undefined }>(
  dir: string,
  validate: (file: string, text: string) => { lab?: L },
  size: (lab: L) => number,
): Promise<BuiltinLab[]> {
  const files = (await readdir(dir)).filter((f) => f.endsWith(".yaml")).sort();
  const labs: BuiltinLab[] = [];
  for (const f of files) {
    const path = join(dir, f);
    const { lab } = validate(f, await readFile(path, "utf8"));
    if (lab) {
      labs.push({
        name: basename(f, ".yaml"),
        description: lab.description ?? "",
        nodes: size(lab),
        path,
      });
    }
  }
  return labs;
}

/** The valid built-in VM labs (labs/*.yaml). */
export function listBuiltinLabs(): Promise<BuiltinLab[]> {
  return listLabFolder(builtinLabsDir(), validateLabText, (lab) => lab.nodes.length);
}
