import {
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  parseDocument,
  visit,
  type Document,
  type Node,
  type YAMLError,
} from "yaml";
import type { Problem } from "./problems.js";

/** Lab files are small; anything larger is not a lab file. */
export const MAX_LAB_FILE_BYTES = 256 * 1024;

/** A parsed YAML document that can say where any dotted path sits in the file. */
export interface YamlSource {
  file: string;
  value: unknown;
  /** Line and column (1-based) of the node at `path`, or of its nearest existing parent. */
  locate(path: readonly PropertyKey[], options?: { key?: boolean }): { line: number; col: number };
}

/**
 * Parse YAML text strictly: syntax errors, duplicate keys, alias bombs, empty files and documents
 * that are not a map all become Problems with a line and column.
 */
export function parseYamlSource(
  file: string,
  text: string,
): { source?: YamlSource; problems: Problem[] } {
  const problems: Problem[] = [];
  const fail = (message: string, pos = { line: 1, col: 1 }, hint?: string) => ({
    problems: [
      { severity: "error" as const, file, ...pos, path: "", message, ...(hint ? { hint } : {}) },
    ],
  });
  if (Buffer.byteLength(text) > MAX_LAB_FILE_BYTES) {
    return fail(
      `the file is larger than ${MAX_LAB_FILE_BYTES / 1024} KiB; a lab file is a few KiB`,
    );
  }
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, {
    lineCounter,
    uniqueKeys: true,
    prettyErrors: false,
    strict: true,
    version: "1.2",
  });
  const errors = independentErrors(doc.errors);
  // Warnings after a syntax error may be the misreading's too.
  const syntaxError = errors.some((e) => e.code !== "DUPLICATE_KEY");
  for (const e of [...errors, ...(syntaxError ? [] : doc.warnings)]) {
    const pos = lineCounter.linePos(e.pos[0]);
    const error = doc.errors.includes(e as YAMLError);
    const hint = error && e.code !== "DUPLICATE_KEY" ? syntaxHint(e.code) : undefined;
    problems.push({
      severity: error ? "error" : "warning",
      file,
      line: pos.line,
      col: pos.col,
      path: "",
      message: yamlMessage(doc, e),
      ...(hint ? { hint } : {}),
    });
  }
  if (problems.some((p) => p.severity === "error")) return { problems };

  if (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null)) {
    return fail("the file is empty", undefined, "start from a built-in lab: k8slab labs");
  }
  if (!isMap(doc.contents)) {
    return fail(
      "the document must be a map of settings (name:, nodes:, ...)",
      posOf(doc.contents, lineCounter),
    );
  }
  let value: unknown;
  try {
    // maxAliasCount bounds the expansion of aliases (the "billion laughs" bomb).
    value = doc.toJS({ maxAliasCount: 50 });
  } catch (error) {
    return fail(`cannot read the document: ${(error as Error).message}`);
  }
  return {
    problems,
    source: {
      file,
      value,
      locate: (path, options = {}) => locate(doc, lineCounter, path, options.key ?? false),
    },
  };
}

/**
 * The syntax errors worth showing. After the first syntax error the parser reads the rest of the
 * file out of step (an indented first key gives one "Unexpected ... token" per later token,
 * hundreds), and even a duplicate key after, or just before, it may be the misreading's (a tab
 * that moves `name:` up a level duplicates the top-level `name:`). So the rule is: the first
 * syntax error alone (it is the one to fix, and the later ones are not trustworthy); duplicate
 * keys only when there is no syntax error, and then all of them (each is a real key, found on a
 * correctly read document).
 */
function independentErrors(errors: readonly YAMLError[]): YAMLError[] {
  const syntax = errors.filter((e) => e.code !== "DUPLICATE_KEY");
  if (syntax.length === 0) return [...errors];
  const first = syntax.reduce((a, b) => (b.pos[0] < a.pos[0] ? b : a));
  return [first];
}

function syntaxHint(code: string): string {
  const after = "the lines after it are checked once it is fixed";
  return code === "UNEXPECTED_TOKEN" || code === "BAD_INDENT"
    ? `check the indentation of this line and the lines above it; ${after}`
    : `a YAML syntax error: ${after}`;
}

function yamlMessage(doc: Document, e: YAMLError | Document["warnings"][number]): string {
  const first = e.message.split("\n")[0] ?? e.message;
  if (e.code === "DUPLICATE_KEY") {
    const key = keyAt(doc, e.pos[0]);
    return key === undefined
      ? "this key appears twice in the same map"
      : `key ${JSON.stringify(key)} appears twice in the same map`;
  }
  return first.replace(/ at line \d+, column \d+:?$/, "");
}

/** The scalar key that starts at `offset` (where the parser reports a duplicate key). */
function keyAt(doc: Document, offset: number): string | undefined {
  let found: string | undefined;
  visit(doc, {
    Pair(_, pair) {
      if (isScalar(pair.key) && pair.key.range?.[0] === offset) {
        found = String(pair.key.value);
        return visit.BREAK;
      }
      return undefined;
    },
  });
  return found;
}

function posOf(node: Node | null | undefined, lc: LineCounter): { line: number; col: number } {
  const offset = node?.range?.[0] ?? 0;
  return lc.linePos(offset);
}

function locate(
  doc: Document,
  lc: LineCounter,
  path: readonly PropertyKey[],
  wantKey: boolean,
): { line: number; col: number } {
  let node: unknown = doc.contents;
  let keyNode: unknown;
  for (const segment of path) {
    if (isMap(node)) {
      const pair = node.items.find(
        (item) => isScalar(item.key) && String(item.key.value) === String(segment),
      );
      if (!pair) break;
      keyNode = pair.key;
      node = pair.value;
    } else if (isSeq(node) && typeof segment === "number" && node.items[segment] !== undefined) {
      keyNode = undefined;
      node = node.items[segment];
    } else {
      break;
    }
  }
  const target = wantKey && keyNode ? keyNode : (node ?? keyNode);
  return posOf(target as Node | undefined, lc);
}
