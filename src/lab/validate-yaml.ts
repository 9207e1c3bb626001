import { distance } from "fastest-levenshtein";
import type { z } from "zod";
import type { Problem, RuleProblem } from "./problems.js";
import { parseYamlSource, type YamlSource } from "./yaml-source.js";

/**
 * Validate YAML text against a zod schema and then cross-field rules, reporting every problem
 * with its file, line, column and dotted path. Rules run only once the shape is right.
 */
export function validateYamlText<T extends z.ZodType>(
  file: string,
  text: string,
  schema: T,
  rules: (value: z.infer<T>) => RuleProblem[] = () => [],
): { value?: z.infer<T>; problems: Problem[] } {
  const { source, problems } = parseYamlSource(file, text);
  if (!source) return { problems };
  const parsed = schema.safeParse(source.value);
  if (!parsed.success) {
    return {
      problems: [
        ...problems,
        ...parsed.error.issues.flatMap((i) => fromZodIssue(source, schema, i)),
      ],
    };
  }
  const ruleProblems = rules(parsed.data).map(({ key, ...p }): Problem => {
    const path =
      p.path === "" ? [] : p.path.split(".").map((s) => (/^\d+$/.test(s) ? Number(s) : s));
    return { ...p, file, ...source.locate(path, { key: key ?? false }) };
  });
  const all = [...problems, ...sortProblems(ruleProblems)];
  return all.some((p) => p.severity === "error")
    ? { problems: all }
    : { value: parsed.data as z.infer<T>, problems: all };
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
