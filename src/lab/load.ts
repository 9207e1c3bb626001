import { readdir, readFile, stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { distance } from "fastest-levenshtein";
import type { z } from "zod";
import { K8slabError } from "../errors.js";
import { LabInvalidError, type Problem } from "./problems.js";
import { checkLabRules } from "./rules.js";
import { labSchema, type Lab } from "./schema.js";
import { parseYamlSource, type YamlSource } from "./yaml-source.js";

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
  const { source, problems } = parseYamlSource(file, text);
  if (!source) return { problems };
  const parsed = labSchema.safeParse(source.value);
  if (!parsed.success) {
    return {
      problems: [...problems, ...parsed.error.issues.flatMap((i) => fromZodIssue(source, i))],
    };
  }
  const ruleProblems = checkLabRules(parsed.data).map(({ key, ...p }): Problem => {
    const path =
      p.path === "" ? [] : p.path.split(".").map((s) => (/^\d+$/.test(s) ? Number(s) : s));
    return { ...p, file, ...source.locate(path, { key: key ?? false }) };
  });
  const all = [...problems, ...sortProblems(ruleProblems)];
  return all.some((p) => p.severity === "error")
    ? { problems: all }
    : { lab: parsed.data, problems: all };
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

function sortProblems(problems: Problem[]): Problem[] {
  return [...problems].sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.col ?? 0) - (b.col ?? 0));
}

function dotted(path: readonly PropertyKey[]): string {
  return path.map(String).join(".");
}

function fromZodIssue(source: YamlSource, issue: z.core.$ZodIssue): Problem[] {
  const base = { severity: "error" as const, file: source.file };
  if (issue.code === "unrecognized_keys") {
    return issue.keys.map((key) => {
      const path = [...issue.path, key];
      const known = knownKeysAt(issue.path);
      const guess = closest(key, known);
      return {
        ...base,
        ...source.locate(path, { key: true }),
        path: dotted(path),
        message: `unknown key ${JSON.stringify(key)}`,
        hint: guess ? `did you mean ${guess}?` : `known keys here: ${known.join(", ")}`,
      };
    });
  }
  const missing = issue.code === "invalid_type" && /received undefined/.test(issue.message);
  return [
    {
      ...base,
      ...source.locate(issue.path),
      path: dotted(issue.path),
      message: missing ? `is required (${issue.expected})` : tidy(issue.message),
    },
  ];
}

function tidy(message: string): string {
  return message.replace(/^Invalid input: /, "").replace(/^Invalid option: /, "");
}

/** The keys the schema allows at a path, for "did you mean" hints. */
function knownKeysAt(path: readonly PropertyKey[]): string[] {
  let schema: unknown = labSchema;
  for (const segment of [...path, null]) {
    schema = unwrap(schema);
    const def = (
      schema as {
        def?: {
          type?: string;
          shape?: Record<string, unknown>;
          element?: unknown;
          valueType?: unknown;
        };
      }
    ).def;
    if (segment === null) return def?.shape ? Object.keys(def.shape) : [];
    if (def?.type === "object" && def.shape) schema = def.shape[String(segment)];
    else if (def?.type === "array") schema = def.element;
    else if (def?.type === "record") schema = def.valueType;
    else return [];
  }
  return [];
}

function unwrap(schema: unknown): unknown {
  let s = schema as { def?: { type?: string; innerType?: unknown; in?: unknown } } | undefined;
  for (let i = 0; i < 10 && s?.def; i++) {
    const { type, innerType } = s.def;
    if (
      (type === "default" || type === "optional" || type === "nullable" || type === "prefault") &&
      innerType
    ) {
      s = innerType as typeof s;
    } else if (type === "pipe" && s.def.in) {
      s = s.def.in as typeof s;
    } else break;
  }
  return s;
}

/** The nearest known key by edit distance, when it is close enough to be a typo. */
function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const d = distance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best !== undefined && bestDistance <= Math.max(2, Math.floor(word.length / 3))
    ? best
    : undefined;
}
