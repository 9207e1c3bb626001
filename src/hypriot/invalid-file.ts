import { K8slabError } from "../errors.js";
import { formatProblem, type Problem } from "../lab/problems.js";

/** A YAML input with errors, every problem listed with file:line:col and its dotted path. Exit 2. */
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
