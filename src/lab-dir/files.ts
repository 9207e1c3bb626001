import { randomBytes } from "node:crypto";
import { chmod, mkdir, open, readdir, rename, rm } from "node:fs/promises";
import { basename, dirname, join, relative, sep } from "node:path";
import { diskError } from "./disk-errors.js";

/** The temporary name writeFileAtomic uses beside `.<name>`; nothing else matches it. */
const ATOMIC_TEMP = /^\..+\.[0-9a-f]{12}\.tmp$/;

/**
 * Write through a temporary file in the same directory and rename it into place, so a reader
 * sees the old or the new content and never half a file (and a full disk leaves the old one).
 * The mode is set explicitly, whatever the umask. A temporary file left by a killed process is
 * removed by removeAtomicTemps.
 */
export async function writeFileAtomic(path: string, content: string, mode: number): Promise<void> {
  const temp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString("hex")}.tmp`);
  try {
    const handle = await open(temp, "wx", mode);
    try {
      await handle.writeFile(content, "utf8");
      await handle.chmod(mode);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw diskError(error, path) ?? error;
  }
}

/** Remove the temporary files writeFileAtomic left in `dir` (not in its subdirectories). */
export async function removeAtomicTemps(dir: string): Promise<string[]> {
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch {
    return [];
  }
  const temps = entries.filter((e) => ATOMIC_TEMP.test(e)).map((e) => join(dir, e));
  await Promise.all(temps.map((t) => rm(t, { force: true })));
  return temps;
}

/**
 * mkdir -p under `root` with `mode` set explicitly on every directory it creates (the umask
 * would otherwise decide: 0777 under umask 000).
 */
export async function mkdirWithMode(root: string, path: string, mode: number): Promise<void> {
  let current = root;
  for (const part of relative(root, path).split(sep).filter(Boolean)) {
    current = join(current, part);
    const created = await mkdir(current, { recursive: true, mode });
    if (created !== undefined) await chmod(current, mode);
  }
}
