import { randomBytes } from "node:crypto";
import { chmod, mkdir, readFile, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { K8slabError } from "../errors.js";
import type { RenderedFile } from "./render.js";

/** Top-level entries of a lab directory that rendering owns; everything else is the lab's. */
export const RENDERED_ENTRIES = ["Vagrantfile", "lab.json", "provision"] as const;

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function writeFiles(root: string, files: readonly RenderedFile[]): Promise<void> {
  for (const file of files) {
    const target = join(root, file.path);
    await mkdir(dirname(target), { recursive: true });
    await writeFile(target, file.content, { mode: file.mode });
    await chmod(target, file.mode);
  }
}

/** Refuse to render into a directory that holds something other than this lab. */
export async function checkLabDir(dir: string, labName: string): Promise<"new" | "existing"> {
  if (!(await exists(dir))) return "new";
  if (!(await stat(dir)).isDirectory()) {
    throw new K8slabError(`${dir} exists and is not a directory`, { hint: "choose another --dir" });
  }
  const entries = await readdir(dir);
  if (entries.length === 0) return "existing";
  let owner: string | undefined;
  try {
    owner = (
      JSON.parse(await readFile(join(dir, "lab.json"), "utf8")) as { lab?: { name?: string } }
    ).lab?.name;
  } catch {
    throw new K8slabError(`${dir} is not empty and is not a k8slab lab directory`, {
      hint: "choose another --dir, or empty it first",
    });
  }
  if (owner !== labName) {
    throw new K8slabError(
      `${dir} holds the lab ${JSON.stringify(owner)}, not ${JSON.stringify(labName)}`,
      {
        hint: `render ${labName} into another --dir, or run k8slab destroy --purge in ${dir} first`,
      },
    );
  }
  return "existing";
}

/**
 * Put rendered files in place as one step as far as the filesystem allows: a new lab directory
 * is built beside its final name and renamed; an existing one gets the rendered entries swapped,
 * keeping everything the lab owns (pki/, state.json, logs/). `prepare` runs on the directory
 * before the swap (it generates the PKI) so a failure there leaves nothing half-written.
 */
export async function writeLabDir(
  dirArg: string,
  files: readonly RenderedFile[],
  prepare: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = resolve(dirArg);
  const suffix = randomBytes(4).toString("hex");
  if (!(await exists(dir)) || (await readdir(dir)).length === 0) {
    const tmp = join(dirname(dir), `.${basename(dir)}.k8slab-new-${suffix}`);
    try {
      await mkdir(tmp, { recursive: true, mode: 0o755 });
      await writeFiles(tmp, files);
      await prepare(tmp);
      await rm(dir, { recursive: true, force: true }); // an empty directory only
      await rename(tmp, dir);
    } catch (error) {
      await rm(tmp, { recursive: true, force: true });
      throw error;
    }
    return;
  }
  const stage = join(dir, `.k8slab-stage-${suffix}`);
  const old = join(dir, `.k8slab-old-${suffix}`);
  try {
    await writeFiles(stage, files);
    await prepare(dir);
    await mkdir(old);
    for (const entry of RENDERED_ENTRIES) {
      if (await exists(join(dir, entry))) await rename(join(dir, entry), join(old, entry));
      if (await exists(join(stage, entry))) await rename(join(stage, entry), join(dir, entry));
    }
  } finally {
    await rm(stage, { recursive: true, force: true });
    await rm(old, { recursive: true, force: true });
  }
}
