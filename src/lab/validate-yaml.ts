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
    return issue.keys.map((key) => {
      const path = [...issue.path, key];
      const known = knownKeysAt(root, issue.path);
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
function knownKeysAt(root: z.ZodType, path: readonly PropertyKey[]): string[] {
  let schema: unknown = root;
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
