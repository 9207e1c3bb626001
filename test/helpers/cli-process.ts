import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { packageRoot } from "../../src/util/package-root.js";

/**
 * argv that runs the CLI from source as one process (tsx as a loader, not a wrapper), so signals
 * sent to it reach k8slab itself.
 */
export function cliArgv(): string[] {
  const root = packageRoot();
  return [
    process.execPath,
    "--import",
    pathToFileURL(join(root, "node_modules", "tsx", "dist", "loader.mjs")).href,
    join(root, "src", "cli", "bin.ts"),
  ];
}
