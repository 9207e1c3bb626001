import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { packageRoot } from "../util/package-root.js";
import type { LabKind } from "./load.js";

/**
 * labs/index.json: the built-in labs' names, kinds, descriptions and sizes, generated from the lab
 * files (`npm run schema`, kept in sync by a test) so that `k8slab labs` answers without loading
 * the YAML parser and the schemas.
 */
export interface BuiltinIndexEntry {
  name: string;
  /** "vm" for `create`, "pi-cluster" for `flash-config`. */
  kind: LabKind;
  description: string;
  /** VMs, or boards of a Pi lab. */
  nodes: number;
}

export function builtinIndexPath(): string {
  return join(packageRoot(), "labs", "index.json");
}

export async function readBuiltinIndex(): Promise<BuiltinIndexEntry[]> {
  return JSON.parse(await readFile(builtinIndexPath(), "utf8")) as BuiltinIndexEntry[];
}
