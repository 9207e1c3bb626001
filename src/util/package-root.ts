import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The package's own folder (from src/ under tsx and from dist/ once built). A module of its own so
 * that the CLI's entry can find package.json without loading the lab parser (zod, yaml).
 */
export function packageRoot(): string {
  return resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
}
