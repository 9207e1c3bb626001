import { dirname } from "node:path";
import { K8slabError } from "../errors.js";

/** What went wrong with a file, and what fixes it, by the error code the system gave. */
const EXPLAIN: Record<string, (file: string) => { what: string; fix: string }> = {
  EACCES: (file) => ({
    what: "permission denied",
    fix: `run k8slab as the user who owns ${dirname(file)}, or choose another --dir`,
  }),
  EPERM: (file) => ({
    what: "operation not permitted",
    fix: `run k8slab as the user who owns ${dirname(file)}, or choose another --dir`,
  }),
  EROFS: () => ({
    what: "the file system is read-only",
    fix: "choose a --dir on a writable file system (or remount it read-write)",
  }),
  ENOSPC: (file) => ({
    what: "no space left on the device",
    fix: `free some space (df -h ${dirname(file)}), then run the command again; what was written before is kept`,
  }),
  EDQUOT: (file) => ({
    what: "disk quota exceeded",
    fix: `free some space in your quota (quota -s), then run the command again (${dirname(file)})`,
  }),
  EBUSY: () => ({
    what: "the file or directory is busy (a mount point, or in use by another program)",
    fix: "choose another --dir, or a directory inside the mount point",
  }),
  ENOTDIR: () => ({
    what: "a part of the path is a file, not a directory",
    fix: "choose another --dir",
  }),
  EISDIR: () => ({ what: "it is a directory", fix: "move it away, or choose another --dir" }),
  EMFILE: () => ({
    what: "too many open files",
    fix: "raise the limit (ulimit -n), then run the command again",
  }),
  EIO: () => ({
    what: "input/output error (a failing disk or a lost network mount)",
    fix: "check the disk (dmesg), then run the command again",
  }),
};

/**
 * A file system error the user can act on (no permission, read-only, disk full, a busy mount
 * point...) as a K8slabError naming the file, the cause and the fix; undefined for anything else.
 */
export function diskError(error: unknown, fallbackPath: string): K8slabError | undefined {
  const e = error as NodeJS.ErrnoException | undefined;
  if (!e || typeof e.code !== "string" || error instanceof K8slabError) return undefined;
  const explain = EXPLAIN[e.code];
  if (!explain) return undefined;
  const file = e.path ?? fallbackPath;
  const { what, fix } = explain(file);
  const verb = e.syscall ? `${e.syscall} ${file}` : file;
  return new K8slabError(`cannot ${verb}: ${what} (${e.code})`, { hint: fix, cause: error });
}

/** Run `fn`; a file system error it throws becomes a K8slabError (see diskError). */
export async function explainDiskErrors<T>(path: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    throw diskError(error, path) ?? error;
  }
}
