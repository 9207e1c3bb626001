import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from "yaml";
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
  for (const e of [...doc.errors, ...doc.warnings]) {
    const pos = lineCounter.linePos(e.pos[0]);
    problems.push({
      severity: doc.errors.includes(e) ? "error" : "warning",
      file,
      line: pos.line,
      col: pos.col,
      path: "",
      message: yamlMessage(e.code, e.message),
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

function yamlMessage(code: string, message: string): string {
  const first = message.split("\n")[0] ?? message;
  if (code === "DUPLICATE_KEY") return "this key appears twice in the same map";
  return first.replace(/ at line \d+, column \d+:?$/, "");
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
