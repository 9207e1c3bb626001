import { AsyncLocalStorage } from "node:async_hooks";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { chmod, link, mkdir, open, readFile, rename, rmdir, stat, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { K8slabError } from "../errors.js";
import { diskError } from "./disk-errors.js";

/**
 * An exclusive lock per lab directory, so two k8slab commands never write one lab at once.
 *
 * The lock is a file created with O_EXCL that names its holder (pid, host, command, start time).
 * Why not proper-lockfile: it records no holder to name in the message, finds a dead holder only
 * after its `stale` period (and only while the holder's timer keeps touching the lock, which a
 * busy event loop delays: it then declares the lock compromised and throws from a timer), and it
 * is not re-entrant. Lab directories are local (Vagrant cannot share VMs between hosts), so a
 * pid check finds a dead holder at once; the process start time (Linux) tells a reused pid apart.
 */
export const LOCK_FILE = ".k8slab.lock";

/** The lock file, or a lock a contender moved aside to remove it (see removeStale). */
export function isLockEntry(name: string): boolean {
  return name === LOCK_FILE || /^\.k8slab\.lock\.stale-[0-9a-f]{8}$/.test(name);
}

export interface LockHolder {
  pid: number;
  host: string;
  /** What the holder is doing, e.g. "render" or "create". */
  command: string;
  since: string;
  /** The holder's start time from /proc (Linux), to tell a reused pid from the holder. */
  started?: string | undefined;
  /** Unique per acquisition. */
  token: string;
}

export interface LockOptions {
  /** How long a second command waits for the holder before it fails (default 10 s). */
  waitMs?: number;
  /** Create the lock file's directory with this mode when it is missing (default: it must exist). */
  dirMode?: number;
  /** Called once when the lock is busy and this command starts waiting. */
  onWait?: (holder: LockHolder) => void;
}

const DEFAULT_WAIT_MS = 10_000;
/** A lock file still empty after this long was cut short by a crash, not being written. */
const CUT_SHORT_MS = 2_000;
/** Locks this async call chain holds: re-entrant within one chain, exclusive across chains. */
const held = new AsyncLocalStorage<ReadonlySet<string>>();

/** Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot. */
function processStarted(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/** Whether the process that wrote the lock still runs (unknowable on another host: assume so). */
export function holderAlive(holder: LockHolder): boolean {
  if (holder.host !== hostname()) return true;
  try {
    process.kill(holder.pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  const started = processStarted(holder.pid);
  return holder.started === undefined || started === undefined || started === holder.started;
}

function parseHolder(text: string): LockHolder | undefined {
  try {
    const data = JSON.parse(text) as Partial<LockHolder>;
    if (typeof data.pid === "number" && typeof data.token === "string") return data as LockHolder;
  } catch {
    // Being written this instant, or cut short by a crash between create and write.
  }
  return undefined;
}

async function readHolder(path: string): Promise<LockHolder | "gone" | undefined> {
  try {
    return parseHolder(await readFile(path, "utf8"));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return "gone";
    throw error;
  }
}

async function olderThan(path: string, ms: number): Promise<boolean> {
  try {
    return Date.now() - (await stat(path)).mtimeMs > ms;
  } catch {
    return false;
  }
}

async function tryCreate(path: string, holder: LockHolder): Promise<boolean> {
  let handle;
  try {
    handle = await open(path, "wx", 0o644);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw error;
  }
  try {
    await handle.writeFile(`${JSON.stringify(holder)}\n`);
  } finally {
    await handle.close();
  }
  return true;
}

/**
 * Remove a lock whose holder is dead (or that was cut short). Only one contender may do it: the
 * others could otherwise remove the lock the first one just took. Moving the lock aside is
 * atomic; whoever moved it checks it is still the stale one, and puts back a live one it took by
 * mistake.
 */
async function removeStale(path: string, stale: LockHolder | undefined): Promise<void> {
  const aside = `${path}.stale-${randomBytes(4).toString("hex")}`;
  try {
    await rename(path, aside);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw error;
  }
  const moved = await readHolder(aside);
  if (moved !== "gone" && moved !== undefined && moved.token !== stale?.token) {
    // Another contender took over between our read and our move: give its lock back (link,
    // unlike rename, never replaces a lock a third one may have taken meanwhile; rename where
    // the file system has no hard links).
    await link(aside, path)
      .catch((e: NodeJS.ErrnoException) => (e.code === "EEXIST" ? undefined : rename(aside, path)))
      .catch(() => undefined);
  }
  await unlink(aside).catch(() => undefined);
}

function describeHolder(holder: LockHolder): string {
  const seconds = Math.round((Date.now() - Date.parse(holder.since)) / 1000);
  const where = holder.host === hostname() ? "" : ` on ${holder.host}`;
  return `k8slab ${holder.command} (pid ${holder.pid}${where}, since ${holder.since}, ${seconds} s ago)`;
}

async function acquire(path: string, what: string, options: LockOptions): Promise<LockHolder> {
  const me: LockHolder = {
    pid: process.pid,
    host: hostname(),
    command: what,
    since: new Date().toISOString(),
    started: processStarted(process.pid),
    token: randomBytes(8).toString("hex"),
  };
  const waitMs = options.waitMs ?? DEFAULT_WAIT_MS;
  const deadline = Date.now() + waitMs;
  let told = false;
  let last: LockHolder | undefined;
  // Bounded by the deadline (at least two attempts); sleeps between attempts while the lock is held.
  for (let attempt = 0; attempt < 2 || Date.now() < deadline; attempt++) {
    me.since = new Date().toISOString();
    if (await tryCreate(path, me)) return me;
    const holder = await readHolder(path);
    if (holder === "gone") continue;
    // A lock file without a holder is being written this instant, or was cut short long ago.
    if (holder === undefined ? await olderThan(path, CUT_SHORT_MS) : !holderAlive(holder)) {
      await removeStale(path, holder);
      continue;
    }
    if (holder !== undefined) {
      last = holder;
      if (!told) options.onWait?.(holder);
      told = true;
    }
    await sleep(Math.min(50 * 2 ** Math.min(attempt, 4), 500));
  }
  if (last === undefined) {
    throw new K8slabError(`${path} stayed locked for ${waitMs} ms by an unreadable lock file`, {
      hint: `if no k8slab runs on this lab, remove ${path}`,
    });
  }
  throw new K8slabError(`${path} is locked: ${describeHolder(last)} is working on this lab`, {
    hint:
      `wait for it to finish (or stop it), then run the command again; if no k8slab runs any ` +
      `more, remove ${path}`,
  });
}

async function release(path: string, me: LockHolder): Promise<void> {
  const holder = await readHolder(path).catch(() => undefined);
  if (holder !== "gone" && holder?.token === me.token) await unlink(path).catch(() => undefined);
}

/**
 * Run `fn` holding the lock file `path` (its directory must exist). A second holder waits up to
 * `waitMs`, then fails naming who holds it; a lock left by a dead process is taken over. Calls
 * nested inside `fn` that ask for the same lock run at once (re-entrant).
 */
export async function withLock<T>(
  path: string,
  what: string,
  fn: () => Promise<T>,
  options: LockOptions = {},
): Promise<T> {
  const key = resolve(path);
  const mine = held.getStore() ?? new Set<string>();
  if (mine.has(key)) return fn();
  let me: LockHolder;
  try {
    if (options.dirMode !== undefined) {
      const created = await mkdir(dirname(key), { recursive: true, mode: options.dirMode });
      if (created !== undefined) await chmod(dirname(key), options.dirMode);
    }
    me = await acquire(key, what, options);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      throw new K8slabError(`${dirname(key)} was removed while k8slab ${what} waited for it`, {
        hint: "another k8slab command removed it (destroy --purge?); check, then run the command again",
        cause: error,
      });
    }
    throw diskError(error, key) ?? error;
  }
  try {
    return await held.run(new Set([...mine, key]), fn);
  } finally {
    await release(key, me);
  }
}

/** Remove `dir` and its parents up to `top` while they are empty (rmdir refuses anything else). */
async function removeIfEmpty(dir: string, top: string): Promise<void> {
  for (let d = dir; d.startsWith(top); d = dirname(d)) {
    try {
      await rmdir(d);
    } catch {
      return;
    }
  }
}

/**
 * Run `fn` holding the lock of lab directory `dir` (`<dir>/.k8slab.lock`). The directory is
 * created (0755) when missing, and removed again afterwards if `fn` left it empty.
 */
export async function withLabLock<T>(
  dir: string,
  what: string,
  fn: () => Promise<T>,
  options: LockOptions = {},
): Promise<T> {
  const root = resolve(dir);
  if (held.getStore()?.has(join(root, LOCK_FILE))) return fn();
  let created: string | undefined;
  try {
    created = await mkdir(root, { recursive: true, mode: 0o755 });
    if (created !== undefined) await chmod(root, 0o755);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") {
      throw new K8slabError(`${root} exists and is not a directory`, {
        hint: "choose another --dir",
      });
    }
    throw diskError(error, root) ?? error;
  }
  try {
    return await withLock(join(root, LOCK_FILE), what, fn, options);
  } finally {
    if (created !== undefined) await removeIfEmpty(root, created);
  }
}
