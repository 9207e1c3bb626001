import { randomBytes, X509Certificate } from "node:crypto";
import { chmod, mkdir, readFile, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { z } from "zod";
import { K8slabError } from "../errors.js";
import { mkdirWithMode, removeAtomicTemps } from "../lab-dir/files.js";
import { CorruptFileError, readJsonFile } from "../lab-dir/json-file.js";
import { isLockEntry } from "../lab-dir/lock.js";
import type { RenderedFile } from "./render.js";

/**
 * Top-level entries of a lab directory that rendering owns; everything else is the lab's.
 * lab.json comes last: a directory holds a lab once its lab.json is in place.
 */
export const RENDERED_ENTRIES = ["Vagrantfile", "provision", "lab.json"] as const;
export const LAB_JSON = "lab.json";
/** Directories rendering creates (the lab directory, provision/...). */
export const RENDERED_DIR_MODE = 0o755;

const STAGE = /^\.k8slab-(stage|old)-[0-9a-f]{8}$/;
/** Where versions before the lock built a new lab directory, beside it (with the CA key). */
const legacyNewDir = (dir: string) =>
  new RegExp(
    `^\\.${basename(dir).replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\.k8slab-new-[0-9a-f]{8}$`,
  );

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Into the staging directory: no reader sees it before the swap, so plain writes do. */
async function writeFiles(root: string, files: readonly RenderedFile[]): Promise<void> {
  for (const file of files) {
    const target = join(root, file.path);
    await mkdirWithMode(root, dirname(target), RENDERED_DIR_MODE);
    await writeFile(target, file.content, { mode: file.mode });
    await chmod(target, file.mode);
  }
}

const labJsonSchema = z.object({ lab: z.object({ name: z.string() }) });

/** The lab whose CA is in `<dir>/pki/ca.pem` (its subject is `<lab>-ca`), if readable. */
export async function labOfPki(dir: string): Promise<string | undefined> {
  try {
    const ca = new X509Certificate(await readFile(join(dir, "pki", "ca.pem")));
    return /(?:^|\n)CN=(.+)-ca(?:\n|$)/.exec(ca.subject)?.[1];
  } catch {
    return undefined;
  }
}

/** The command that rebuilds a lab directory's lab.json from its lab file, keeping the PKI. */
export function repairCommand(labRef: string, dir: string): string {
  return `k8slab render ${labRef} --dir ${dir} --repair`;
}

export interface CheckLabDirOptions {
  /** Rebuild a corrupt lab.json (the PKI must be this lab's, or absent). */
  repair?: boolean | undefined;
  /** How the user named the lab (a built-in name or a file), for hints. */
  labRef?: string | undefined;
}

/** Files in a lab directory that are no lab content: the lock and leftovers of a killed run. */
function isBookkeeping(entry: string): boolean {
  return isLockEntry(entry) || STAGE.test(entry);
}

/**
 * The entries of an output directory that are content (not the lock or a killed run's staging
 * directories): none for a missing or empty one. Throws when `dir` is not a directory. What
 * `render` and `flash-config` look at before they write into a directory.
 */
export async function contentEntries(dir: string, option: string): Promise<string[]> {
  if (!(await exists(dir))) return [];
  if (!(await stat(dir)).isDirectory()) {
    throw new K8slabError(`${dir} exists and is not a directory`, {
      hint: `choose another ${option}`,
    });
  }
  return (await readdir(dir)).filter((e) => !isBookkeeping(e));
}

/** Refusal to write into a non-empty directory another program (or the user) filled. */
export function notOursError(dir: string, what: string, option: string): K8slabError {
  return new K8slabError(`${dir} is not empty and is not ${what}`, {
    hint: `choose another ${option}, or empty it first`,
  });
}

/**
 * Refuse to render into a directory that holds something other than this lab. A directory with
 * this lab's PKI but no lab.json is a render that was interrupted: it is continued. A corrupt
 * lab.json stops with the command that rebuilds it; with `repair` it is rebuilt.
 */
export async function checkLabDir(
  dir: string,
  labName: string,
  options: CheckLabDirOptions = {},
): Promise<"new" | "existing"> {
  const entries = await contentEntries(dir, "--dir");
  if (entries.length === 0) return "new";
  const pkiLab = await labOfPki(dir);
  let owner: string | undefined;
  try {
    owner = (
      await readJsonFile(join(dir, LAB_JSON), labJsonSchema, {
        what: "the rendered lab",
        fix: `rebuild it from the lab file, keeping the PKI: ${repairCommand(options.labRef ?? pkiLab ?? labName, dir)}`,
      })
    )?.lab.name;
  } catch (error) {
    if (!(error instanceof CorruptFileError) || !options.repair) throw error;
    owner = pkiLab ?? (entries.includes("pki") ? undefined : labName);
  }
  owner ??= pkiLab;
  if (owner === undefined) {
    throw notOursError(dir, "a k8slab lab directory", "--dir");
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
 * Remove what a killed render left (only names k8slab writes): staging directories, temporary
 * files of atomic writes in the PKI, and new-directory builds of versions before the lock
 * beside the lab directory. Run it only while holding the lab's lock, so no live run's files go.
 */
export async function removeLeftovers(dirArg: string): Promise<string[]> {
  const dir = resolve(dirArg);
  const removed: string[] = [];
  const removeMatching = async (parent: string, pattern: RegExp) => {
    const entries = await readdir(parent).catch(() => [] as string[]);
    for (const entry of entries.filter((e) => pattern.test(e))) {
      await rm(join(parent, entry), { recursive: true, force: true });
      removed.push(join(parent, entry));
    }
  };
  await removeMatching(dir, STAGE);
  await removeMatching(dirname(dir), legacyNewDir(dir));
  const pki = join(dir, "pki");
  const nodes = join(pki, "nodes");
  const nodeDirs = (await readdir(nodes).catch(() => [] as string[])).map((n) => join(nodes, n));
  for (const d of [dir, pki, nodes, ...nodeDirs]) removed.push(...(await removeAtomicTemps(d)));
  return removed;
}

/**
 * Put rendered files in place. Call it holding the lab's lock (the directory exists then). The
 * files are written into a staging directory inside the lab directory first; `prepare` (the PKI)
 * runs on the staging directory for a new lab, so a failure leaves nothing half-written, and on
 * the lab directory itself for an existing one (it keeps the PKI there). Then the rendered
 * entries are swapped in, lab.json last; everything else the lab owns (pki/, state.json,
 * logs/) stays. Nothing is renamed over the lab directory itself, so a mount point works too.
 */
export async function writeLabDir(
  dirArg: string,
  files: readonly RenderedFile[],
  prepare: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = resolve(dirArg);
  const fresh = (await readdir(dir)).every(isBookkeeping);
  await stageAndSwap(dir, RENDERED_ENTRIES, async (stage) => {
    await writeFiles(stage, files);
    if (fresh) {
      await prepare(stage);
      for (const entry of await readdir(stage)) {
        if (!(RENDERED_ENTRIES as readonly string[]).includes(entry)) {
          await rename(join(stage, entry), join(dir, entry));
        }
      }
    } else {
      await prepare(dir);
    }
  });
}

/**
 * Build new content in a staging directory inside `dir` (`build` gets its path), then swap each
 * of `entries` in, in order (put the one that marks the directory as complete last): the old
 * one is moved aside, the new one (if the stage has it) renamed into place. The staging and
 * moved-aside entries are removed whatever happens, and removeLeftovers removes what a killed
 * run left. Used by render (lab directories) and flash-config (its output directory).
 */
export async function stageAndSwap(
  dirArg: string,
  entries: readonly string[],
  build: (stage: string) => Promise<void>,
): Promise<void> {
  const dir = resolve(dirArg);
  const suffix = randomBytes(4).toString("hex");
  const stage = join(dir, `.k8slab-stage-${suffix}`);
  const old = join(dir, `.k8slab-old-${suffix}`);
  try {
    await mkdir(stage, { mode: RENDERED_DIR_MODE });
    await chmod(stage, RENDERED_DIR_MODE);
    await build(stage);
    await mkdir(old);
    for (const entry of entries) {
      if (await exists(join(dir, entry))) await rename(join(dir, entry), join(old, entry));
      if (await exists(join(stage, entry))) await rename(join(stage, entry), join(dir, entry));
    }
  } finally {
    await rm(stage, { recursive: true, force: true });
    await rm(old, { recursive: true, force: true });
  }
}
