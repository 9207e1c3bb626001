import { K8slabError } from "../errors.js";

/** One thing wrong (or worth a warning) in a lab file, pinned to where it is. */
export interface Problem {
  severity: "error" | "warning";
  /** Dotted path inside the document, e.g. `nodes.1.ip`; empty for the whole document. */
  path: string;
  message: string;
  hint?: string;
  file?: string;
  line?: number;
  col?: number;
}

/** A problem found by a cross-field rule, before it is pinned to a line (`key`: point at the key). */
export type RuleProblem = Omit<Problem, "file" | "line" | "col"> & { key?: boolean };

export function ruleError(path: string, message: string, hint?: string): RuleProblem {
  return { severity: "error", path, message, ...(hint ? { hint } : {}) };
}

export function ruleWarning(path: string, message: string, hint?: string): RuleProblem {
  return { severity: "warning", path, message, ...(hint ? { hint } : {}) };
}

export function formatProblem(p: Problem): string {
  const where = [p.file, p.line, p.col].filter((x) => x !== undefined).join(":");
  const severity = p.severity === "warning" ? "warning: " : "";
  const head = [where, p.path].filter((s) => s !== "" && s !== undefined).join(" ");
  const hint = p.hint ? `\n    hint: ${p.hint}` : "";
  return `${head ? `${head}: ` : ""}${severity}${p.message}${hint}`;
}

/** A YAML input with errors: every problem is listed with file:line:col and its dotted path. Exit 2. */
export class InvalidFileError extends K8slabError {
  readonly problems: Problem[];

  constructor(file: string, what: string, problems: Problem[], hint: string) {
    const errors = problems.filter((p) => p.severity === "error");
    super(
      `${file} is not a valid ${what} (${errors.length} error${errors.length === 1 ? "" : "s"}):\n` +
        problems.map((p) => `  ${formatProblem(p)}`).join("\n"),
      { exitCode: 2, hint },
    );
    this.name = "InvalidFileError";
    this.problems = problems;
  }
}

/** A lab file with errors. */
export class LabInvalidError extends InvalidFileError {
  constructor(file: string, problems: Problem[]) {
    super(file, "lab", problems, `fix the lines above, then run: k8slab validate ${file}`);
    this.name = "LabInvalidError";
  }
}
