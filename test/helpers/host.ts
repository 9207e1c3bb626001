import { constants, promises as fs } from "node:fs";
import path from "node:path";
import { execa } from "execa";

/** Small host utilities shared by the test harnesses (netns, nspawn, libvirt). */

/** root's PATH under a test runner may lack the sbin directories. */
export const SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin";

export function hostPath(): string {
  return `${process.env.PATH ?? ""}:${SBIN_PATH}`;
}

export { tail } from "../../src/util/exec.js";
import { tail } from "../../src/util/exec.js";

export function isRoot(): boolean {
  return typeof process.getuid === "function" && process.getuid() === 0;
}

export async function findTool(name: string): Promise<string | undefined> {
  for (const dir of hostPath().split(":")) {
    if (dir === "") continue;
    const candidate = path.join(dir, name);
    try {
      await fs.access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

export async function readText(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, "utf8");
  } catch {
    return undefined;
  }
}

/** Runs a host command; throws an error carrying the command, how it ended and its output tail. */
export async function run(
  file: string,
  args: readonly string[],
  opts: { timeoutMs?: number; input?: string } = {},
): Promise<string> {
  const result = await execa(file, args, {
    reject: false,
    all: true,
    timeout: opts.timeoutMs ?? 60_000,
    forceKillAfterDelay: 2_000,
    stdin: opts.input === undefined ? "ignore" : "pipe",
    ...(opts.input === undefined ? {} : { input: opts.input }),
    env: { PATH: hostPath(), LC_ALL: "C" },
  });
  if (result.failed) {
    const how = result.timedOut
      ? "timed out"
      : result.signal
        ? `was killed by ${result.signal}`
        : `exited with ${result.exitCode ?? "?"}`;
    throw new Error(`${[file, ...args].join(" ")} ${how}\n${tail(String(result.all ?? ""))}`);
  }
  return String(result.stdout ?? "");
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/** Names of the network namespaces on the host. */
export async function netnsNames(): Promise<string[]> {
  return (await run("ip", ["netns", "list"], { timeoutMs: 10_000 }))
    .split("\n")
    .map((l) => l.split(" ")[0] ?? "")
    .filter(Boolean);
}

/** Host processes (other than this one) whose command line mentions `needle`. */
export async function processesMentioning(needle: string): Promise<string[]> {
  const found: string[] = [];
  for (const pid of await fs.readdir("/proc")) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    if (cmdline.includes(needle)) found.push(`${pid}: ${cmdline.replaceAll("\0", " ")}`);
  }
  return found;
}
