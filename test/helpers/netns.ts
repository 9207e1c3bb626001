/**
 * Throw-away networks for tests: one network namespace per host, each joined by a veth pair to a
 * bridge that lives in a further namespace of its own, so nothing is added to the root namespace
 * and no packet leaves these namespaces. Every wait is bounded; `destroy` (also run when the
 * process exits) kills what was started in them and deletes every namespace.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { openSync, closeSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { execa } from "execa";
import { alive, signal } from "./host.js";

export interface NetnsHostSpec {
  /** Short name, used in the namespace name (e.g. "master"). */
  name: string;
  ip: string;
}

export interface NetnsHost extends NetnsHostSpec {
  ns: string;
}

export interface NetnsExecResult {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
  all: string;
  timedOut: boolean;
}

export interface NetnsNetwork {
  bridgeNs: string;
  hosts: NetnsHost[];
  host(name: string): NetnsHost;
  /** Run a program inside a namespace and wait for it (killed after `timeoutMs`). */
  exec(
    ns: string,
    file: string,
    args: readonly string[],
    options?: { timeoutMs?: number; env?: Record<string, string> },
  ): Promise<NetnsExecResult>;
  /** Start a long-running program inside a namespace; output goes to `logFile`. */
  start(ns: string, file: string, args: readonly string[], logFile: string): ChildProcess;
  /** Kill everything started here and delete every namespace; safe to call twice. */
  destroy(): Promise<void>;
}

export interface NetnsSupport {
  ok: boolean;
  reason: string;
}

/** Synchronous so it can feed `describe.skipIf`. */
export function netnsSupport(): NetnsSupport {
  if (process.platform !== "linux") return { ok: false, reason: "not Linux" };
  if (typeof process.getuid !== "function" || process.getuid() !== 0) {
    return { ok: false, reason: "not root" };
  }
  try {
    execFileSync("ip", ["netns", "list"], { stdio: "ignore", timeout: 5_000 });
    return { ok: true, reason: "" };
  } catch (error) {
    return { ok: false, reason: `ip netns is unavailable: ${String(error)}` };
  }
}

export interface WaitOptions {
  attempts: number;
  intervalMs: number;
  timeoutMs: number;
}

/**
 * Poll `probe` until it returns a value, at most `attempts` times and for at most `timeoutMs`;
 * the error names what was awaited and the last thing the probe said.
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<{ done: true; value: T } | { done: false; detail: string }>,
  options: WaitOptions,
): Promise<T> {
  const deadline = Date.now() + options.timeoutMs;
  let last = "(never probed)";
  for (let attempt = 1; attempt <= options.attempts && Date.now() < deadline; attempt++) {
    const outcome = await probe();
    if (outcome.done) return outcome.value;
    last = outcome.detail;
    await sleep(Math.min(options.intervalMs, Math.max(0, deadline - Date.now())));
  }
  throw new Error(
    `timed out waiting for ${what} (${options.attempts} attempts, ${options.timeoutMs} ms); last: ${last}`,
  );
}

function ipSync(args: string[]): string {
  return execFileSync("ip", args, { encoding: "utf8", timeout: 10_000, stdio: "pipe" });
}

async function ip(args: string[]): Promise<void> {
  await execa("ip", args, { timeout: 15_000 });
}

function pidsIn(ns: string): number[] {
  try {
    return ipSync(["netns", "pids", ns])
      .split("\n")
      .map((l) => Number(l.trim()))
      .filter((pid) => Number.isInteger(pid) && pid > 0);
  } catch {
    return [];
  }
}

async function waitGone(pids: number[], timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; i < 200 && Date.now() < deadline; i++) {
    if (pids.every((pid) => !alive(pid))) return true;
    await sleep(50);
  }
  return pids.every((pid) => !alive(pid));
}

/**
 * Create `<prefix>br` holding bridge `br0`, and per host `<prefix><name>` with `eth0` at
 * `<ip>/<prefixLength>` cabled to the bridge. Partial setups are torn down before an error escapes.
 */
export async function createNetnsNetwork(options: {
  prefix: string;
  prefixLength: number;
  hosts: readonly NetnsHostSpec[];
}): Promise<NetnsNetwork> {
  const bridgeNs = `${options.prefix}br`;
  const hosts: NetnsHost[] = options.hosts.map((h) => ({ ...h, ns: `${options.prefix}${h.name}` }));
  const created: string[] = [];
  const started = new Set<ChildProcess>();
  let destroyed = false;

  const teardownSync = (): void => {
    for (const child of started) if (child.pid !== undefined) signal(child.pid, "SIGKILL");
    for (const ns of created) {
      for (const pid of pidsIn(ns)) signal(pid, "SIGKILL");
      try {
        ipSync(["netns", "del", ns]);
      } catch {
        // best effort while the process exits
      }
    }
  };
  process.once("exit", teardownSync);

  const destroy = async (): Promise<void> => {
    if (destroyed) return;
    destroyed = true;
    process.removeListener("exit", teardownSync);
    const errors: string[] = [];
    const ours = [...started].map((c) => c.pid).filter((p): p is number => p !== undefined);
    for (const pid of ours) signal(pid, "SIGTERM");
    if (!(await waitGone(ours, 5_000))) {
      for (const pid of ours) signal(pid, "SIGKILL");
      await waitGone(ours, 2_000);
    }
    for (const ns of created) {
      // Anything still running in a namespace we made was started by this test.
      const leftovers = pidsIn(ns);
      for (const pid of leftovers) signal(pid, "SIGKILL");
      await waitGone(leftovers, 2_000);
    }
    for (const ns of [...created].reverse()) {
      try {
        await ip(["netns", "del", ns]);
      } catch (error) {
        errors.push(`ip netns del ${ns}: ${String(error)}`);
      }
    }
    if (errors.length > 0) throw new Error(errors.join("\n"));
  };

  const addNs = async (ns: string): Promise<void> => {
    await ip(["netns", "add", ns]);
    created.push(ns);
    await ip(["-n", ns, "link", "set", "lo", "up"]);
  };

  try {
    await addNs(bridgeNs);
    await ip(["-n", bridgeNs, "link", "add", "br0", "type", "bridge"]);
    await ip(["-n", bridgeNs, "link", "set", "br0", "up"]);
    for (const [i, host] of hosts.entries()) {
      await addNs(host.ns);
      // Created inside the bridge namespace; the peer moves straight into the host namespace.
      const port = `p${i}`;
      await ip([
        "-n",
        bridgeNs,
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        host.ns,
      ]);
      await ip(["-n", bridgeNs, "link", "set", port, "master", "br0"]);
      await ip(["-n", bridgeNs, "link", "set", port, "up"]);
      await ip(["-n", host.ns, "addr", "add", `${host.ip}/${options.prefixLength}`, "dev", "eth0"]);
      await ip(["-n", host.ns, "link", "set", "eth0", "up"]);
    }
  } catch (error) {
    await destroy().catch(() => undefined);
    throw error;
  }

  return {
    bridgeNs,
    hosts,
    host(name) {
      const found = hosts.find((h) => h.name === name);
      if (found === undefined) throw new Error(`no host ${name} in this network`);
      return found;
    },
    async exec(ns, file, args, execOptions = {}) {
      const result = await execa("ip", ["netns", "exec", ns, file, ...args], {
        reject: false,
        all: true,
        timeout: execOptions.timeoutMs ?? 20_000,
        env: execOptions.env,
        forceKillAfterDelay: 2_000,
      });
      return {
        exitCode: result.exitCode,
        stdout: String(result.stdout ?? ""),
        stderr: String(result.stderr ?? ""),
        all: String(result.all ?? ""),
        timedOut: result.timedOut,
      };
    },
    start(ns, file, args, logFile) {
      if (destroyed) throw new Error("network already destroyed");
      const fd = openSync(logFile, "a", 0o600);
      try {
        // `ip netns exec` execs the program, so the child's pid is the program's.
        const child = spawn("ip", ["netns", "exec", ns, file, ...args], {
          stdio: ["ignore", fd, fd],
        });
        started.add(child);
        child.on("error", () => undefined);
        return child;
      } finally {
        closeSync(fd);
      }
    },
    destroy,
  };
}
