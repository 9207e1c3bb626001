import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseDocument } from "yaml";
import { builtinLabsDir, validateLabText } from "../../src/lab/load.js";
import { formatProblem, type Problem } from "../../src/lab/problems.js";

export function builtinText(name: string): string {
  return readFileSync(join(builtinLabsDir(), `${name}.yaml`), "utf8");
}

/** The built-in lab's text with some paths changed (undefined deletes the key). */
export function editedLab(
  name: string,
  edits: [path: (string | number)[], value: unknown][],
): string {
  const doc = parseDocument(builtinText(name));
  for (const [path, value] of edits) {
    if (value === undefined) doc.deleteIn(path);
    else doc.setIn(path, doc.createNode(value));
  }
  return doc.toString();
}

/**
 * Edits that make a built-in lab download nothing, for tests with no registry and no internet:
 * no artifacts, the pause image made on the nodes, no addons (whose images come from a registry).
 */
export const OFFLINE: [path: (string | number)[], value: unknown][] = [
  [["artifacts"], {}],
  [
    ["images", "build"],
    ["hyperkube", "pause"],
  ],
  [["addons"], []],
];

export function problemsOf(text: string, file = "lab.yaml"): Problem[] {
  return validateLabText(file, text).problems;
}

export function lines(problems: Problem[]): string[] {
  return problems.map(formatProblem);
}
