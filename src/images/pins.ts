import { randomBytes } from "node:crypto";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { K8slabError } from "../errors.js";
import { DIGEST } from "./manifest.js";

/**
 * Digests recorded for image references the lab gives without one: the tag is resolved once,
 * and every later pull (and every other lab using the name) gets the same image.
 */
export function imagePinsPath(cache: string): string {
  return join(cache, "image-pins.json");
}

export async function readImagePins(cache: string): Promise<Record<string, string>> {
  let text: string;
  try {
    text = await readFile(imagePinsPath(cache), "utf8");
  } catch {
    return {};
  }
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch (error) {
    throw new K8slabError(`${imagePinsPath(cache)} is not valid JSON`, {
      hint: "fix it, or remove it to resolve every unpinned image tag again",
      cause: error,
    });
  }
  return Object.fromEntries(
    Object.entries(json).filter(
      (e): e is [string, string] => typeof e[1] === "string" && DIGEST.test(e[1]),
    ),
  );
}

export async function recordImagePin(cache: string, name: string, digest: string): Promise<void> {
  await mkdir(cache, { recursive: true });
  const pins = { ...(await readImagePins(cache)), [name]: digest };
  const sorted = Object.fromEntries(Object.entries(pins).sort(([a], [b]) => a.localeCompare(b)));
  const tmp = `${imagePinsPath(cache)}.${randomBytes(4).toString("hex")}`;
  await writeFile(tmp, `${JSON.stringify(sorted, null, 2)}\n`);
  await rename(tmp, imagePinsPath(cache));
}
