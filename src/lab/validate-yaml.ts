import { distance } from "fastest-levenshtein";
import type { z } from "zod";
import type { Problem, RuleProblem } from "./problems.js";
import { parseYamlSource, type YamlSource } from "./yaml-source.js";

/** A cross-field rule: it reads some sections of a value the schema has shaped. */
export type Rule<V> = (value: V) => RuleProblem[];

/**
 * Validate YAML text against a zod schema and cross-field rules, reporting every problem with
 * its file, line, column and dotted path, sorted by line. The rules run even when the schema
 * fails elsewhere: each sees only the top-level sections that are well-formed on their own, and a
 * rule that reads a malformed one is skipped (its inputs would be guesses), so one pass shows an
 * unknown key and a duplicate address together.
 */
export function validateYamlText<T extends z.ZodType>(
  file: string,
  text: string,
  schema: T,
  rules: Rule<z.infer<T>> | readonly Rule<z.infer<T>>[] = [],
): { value?: z.infer<T>; problems: Problem[] } {
  const { source, problems } = parseYamlSource(file, text);
  if (!source) return { problems };
  const parsed = schema.safeParse(source.value);
  const schemaProblems = parsed.success
    ? []
    : parsed.error.issues.flatMap((i) => fromZodIssue(source, schema, i));
  // Typed as the schema's output, but sections that failed throw when read (see runRules).
  const input = (parsed.success ? parsed.data : wellFormedSections(schema, source.value)) as
    z.infer<T> | undefined;
  const ruleProblems =
    input === undefined ? [] : runRules(typeof rules === "function" ? [rules] : rules, input);
  const pinned = ruleProblems.map(({ key, ...p }): Problem => {
    const path =
      p.path === "" ? [] : p.path.split(".").map((s) => (/^\d+$/.test(s) ? Number(s) : s));
    return { ...p, file, ...source.locate(path, { key: key ?? false }) };
  });
  const all = sortProblems([...problems, ...schemaProblems, ...pinned]);
  return !parsed.success || all.some((p) => p.severity === "error")
    ? { problems: all }
    : { value: parsed.data as z.infer<T>, problems: all };
}

/** Thrown by a section the schema rejected when a rule reads it. */
class MalformedSection extends Error {}

/**
 * The document with each top-level section the schema accepts on its own (defaults applied);
 * reading any other section throws MalformedSection. A section with any issue, an unknown key
 * included, counts as malformed: a misspelt key's value would otherwise be replaced by a default
 * the rules would then judge.
 */
function wellFormedSections(schema: z.ZodType, raw: unknown): unknown {
  const shape = defOf(schema)?.shape;
  if (!shape || typeof raw !== "object" || raw === null || Array.isArray(raw)) return undefined;
  const value: Record<string, unknown> = {};
  for (const [key, section] of Object.entries(shape)) {
    const result = (section as z.ZodType).safeParse((raw as Record<string, unknown>)[key]);
    if (result.success) value[key] = result.data;
    else
      Object.defineProperty(value, key, {
        enumerable: true,
        get() {
          throw new MalformedSection(key);
        },
      });
  }
  return value;
}

function runRules<V>(rules: readonly Rule<V>[], value: V): RuleProblem[] {
  return rules.flatMap((rule) => {
    try {
      return rule(value);
    } catch (error) {
      if (error instanceof MalformedSection) return [];
      throw error;
    }
  });
}

function sortProblems(problems: Problem[]): Problem[] {
  return [...problems].sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.col ?? 0) - (b.col ?? 0));
}

function dotted(path: readonly PropertyKey[]): string {
  return path.map(String).join(".");
}

function fromZodIssue(source: YamlSource, root: z.ZodType, issue: z.core.$ZodIssue): Problem[] {
  const base = { severity: "error" as const, file: source.file };
  if (issue.code === "unrecognized_keys") {
    const shapes = shapesAt(root, issue.path);
    const known = [...new Set(shapes.flat())];
    return issue.keys.map((key) => {
      const path = [...issue.path, key];
      const guess = known.includes(key) ? undefined : closest(key, known);
      const choices = shapes.map((keys) => `{${keys.join(", ")}}`).join(" or ");
      return {
        ...base,
        ...source.locate(path, { key: true }),
        path: dotted(path),
        message: `unknown key ${JSON.stringify(key)}`,
        hint: guess
          ? `did you mean ${guess}?`
          : shapes.length > 1
            ? `this takes one of ${choices}, not a mix`
            : `known keys here: ${known.join(", ")}`,
      };
    });
  }
  if (issue.code === "invalid_key") {
    // A record key the key schema refused: its own messages, at the key.
    const messages = [...new Set(issue.issues.map((inner) => tidy(inner.message)))];
    return [
      {
        ...base,
        ...source.locate(issue.path, { key: true }),
        path: dotted(issue.path),
        message: `key ${JSON.stringify(String(issue.path.at(-1)))} ${messages.join("; ")}`,
      },
    ];
  }
  const missing = issue.code === "invalid_type" && /received undefined/.test(issue.message);
  const guess =
    issue.code === "invalid_value"
      ? nearestValue(valueAt(source.value, issue.path), issue.values)
      : undefined;
  return [
    {
      ...base,
      ...source.locate(issue.path),
      path: dotted(issue.path),
      message: missing ? `is required (${issue.expected})` : tidy(issue.message),
      ...(guess !== undefined ? { hint: `did you mean ${guess}?` } : {}),
    },
  ];
}

/** For a value outside an enum (`workr`), the allowed value it is a typo of (`worker`). */
function nearestValue(value: unknown, allowed: readonly unknown[]): string | undefined {
  if (typeof value !== "string") return undefined;
  return closest(
    value,
    allowed.filter((v): v is string => typeof v === "string"),
  );
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let node = root;
  for (const segment of path) {
    if (typeof node !== "object" || node === null) return undefined;
    node = (node as Record<PropertyKey, unknown>)[segment];
  }
  return node;
}

function tidy(message: string): string {
  return message.replace(/^Invalid input: /, "").replace(/^Invalid option: /, "");
}

/**
 * The key sets the schema allows at a path, for "did you mean" hints: one per object shape (a
 * union offers several).
 */
function shapesAt(root: z.ZodType, path: readonly PropertyKey[]): string[][] {
  let schemas: unknown[] = [root];
  for (const segment of path) {
    schemas = schemas.flatMap(options).flatMap((s) => {
      const def = defOf(s);
      if (def?.type === "object" && def.shape) return [def.shape[String(segment)]];
      if (def?.type === "array") return [def.element];
      if (def?.type === "record") return [def.valueType];
      return [];
    });
  }
  return schemas.flatMap(options).flatMap((s) => {
    const shape = defOf(s)?.shape;
    return shape ? [Object.keys(shape)] : [];
  });
}

interface SchemaDef {
  type?: string;
  shape?: Record<string, unknown>;
  element?: unknown;
  valueType?: unknown;
  options?: unknown[];
}

function defOf(schema: unknown): SchemaDef | undefined {
  return (unwrap(schema) as { def?: SchemaDef } | undefined)?.def;
}

/** A union's options (each unwrapped, nested unions flattened); any other schema is its own. */
function options(schema: unknown): unknown[] {
  const def = defOf(schema);
  return def?.type === "union" && def.options ? def.options.flatMap(options) : [unwrap(schema)];
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

/**
 * The nearest candidate by edit distance, when it is close enough to be a typo: for unknown
 * keys, enum values and lab names.
 */
export function closest(word: string, candidates: readonly string[]): string | undefined {
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
