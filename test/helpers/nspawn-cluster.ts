/**
 * Test harness: boot Debian 12 nodes with real systemd as systemd-nspawn containers, each in its
 * own network namespace, joined by a Linux bridge that lives in one more namespace the harness
 * creates. Provisioning scripts run in the nodes through `exec` (nsenter into the container's
 * namespaces), so `systemctl`, `journalctl` and `systemd-run` work as on a Vagrant VM.
 *
 * Layout of one cluster (id `k8slab-t<pid>c<n>`):
 *
 *   netns <id>-br:  lo, br0 (bridge, no address), v0..vN (host ends of the veth pairs)
 *   netns <id>-n<i>: lo, eth1 = <ip>/<prefix>   (peer of v<i>; the lab scripts expect eth1)
 *   <tmpdir>/<id>-XXXX/n<i>/{upper,work,root}   overlayfs over the cached rootfs (or a cp -a copy)
 *   systemd-nspawn --boot --directory=.../root --network-namespace-path=/run/netns/<id>-n<i>
 *
 * Nothing is routed out of the namespaces: there is no eth0 and no default route, so a node can
 * only reach the other nodes of its own cluster (the network rule in design.md).
 *
 * What works on this host (Debian 12, systemd 252, no systemd as PID 1, cgroups in the "hybrid"
 * layout: v1 controllers plus cgroup2 at /sys/fs/cgroup/unified), found by trying:
 * - No systemd-machined, so `--register=no`; and no system manager to allocate a scope, so
 *   `--keep-unit`. With --keep-unit nspawn puts the container in `<own cgroup>/payload`; several
 *   nspawns started from one process would share that cgroup, so each one is first moved into a
 *   cgroup of its own (name=systemd and cgroup2 hierarchies), which stop() removes again.
 *   Where systemd is PID 1 (/run/systemd/system exists) nspawn is left to allocate its own scope.
 * - systemd inside the container boots fine with the hybrid layout nspawn picks by default;
 *   SYSTEMD_NSPAWN_UNIFIED_HIERARCHY is not needed.
 * - No udev is needed: nspawn makes /dev itself. `machinectl` does not work without machined,
 *   so commands enter the container with `nsenter --all --root` on the container's PID 1.
 * - The rootfs keeps file capabilities (ping has cap_net_raw): debootstrap writes them on the
 *   cache directory, overlayfs copies xattrs up, and the cp fallback uses -a (xattrs included).
 */
import { execa } from "execa";
import { createHash } from "node:crypto";
import type { Dirent } from "node:fs";
import { existsSync, promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { findTool, isRoot, readText, run, tail } from "./host.js";

export interface NodeSpec {
  name: string;
  /** e.g. "192.168.56.165" */
  ip: string;
  /** e.g. 24 */
  prefix: number;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export interface NspawnNode {
  name: string;
  ip: string;
  /** Runs `bash -c cmd` as root in the node (login-like environment, systemd reachable). */
  exec(cmd: string, opts?: { timeoutMs?: number }): Promise<ExecResult>;
  /** Copies a host file or directory (recursively) to an absolute path inside the node. */
  copyIn(hostPath: string, nodePath: string): Promise<void>;
  /** Host PID of the container's init: `nsenter --target <leader> --all --root` enters the node. */
  leader: number;
}

export interface NspawnCluster {
  /** Unique per cluster; prefix of every namespace, machine and directory name it uses. */
  id: string;
  /** Host directory holding the node copies (removed by stop()). */
  workDir: string;
  nodes: NspawnNode[];
  /** The namespace holding the bridge br0 that joins the nodes' eth1. */
  bridgeNetns: string;
  /** Idempotent: powers off and kills the containers, removes namespaces, mounts and copies. */
  stop(): Promise<void>;
}

export const ROOTFS_SUITE = "bookworm";
export const ROOTFS_PACKAGES: readonly string[] = [
  "systemd",
  "systemd-sysv",
  "dbus",
  "iproute2",
  "iputils-ping",
  "curl",
  "ca-certificates",
  "etcd-server",
  "etcd-client",
  "procps",
  "openssh-server",
  "sudo",
];
/** Bump when the way the rootfs is made changes outside build-test-rootfs.sh. */
const ROOTFS_FORMAT = 1;

const BUILD_SCRIPT = fileURLToPath(new URL("../../scripts/build-test-rootfs.sh", import.meta.url));
const NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const REQUIRED_TOOLS = [
  "systemd-nspawn",
  "debootstrap",
  "ip",
  "nsenter",
  "mount",
  "umount",
  "flock",
  "tar",
  "bash",
];
const BUILD_TIMEOUT_MS = 30 * 60_000;
const DEFAULT_BOOT_TIMEOUT_MS = 90_000;
const DEFAULT_EXEC_TIMEOUT_MS = 120_000;
const POWEROFF_TIMEOUT_MS = 20_000;

// ---------------------------------------------------------------------------------------------
// small utilities

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

// ---------------------------------------------------------------------------------------------
// apt sources -> mirror

export interface AptMirror {
  uri: string;
  keyring?: string;
  /** Where the entry was found (for messages). */
  source: string;
}

interface AptEntry {
  types: string[];
  uris: string[];
  suites: string[];
  components: string[];
  signedBy?: string;
  enabled: boolean;
  source: string;
}

function parseOneLineSources(text: string, source: string): AptEntry[] {
  const entries: AptEntry[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*$/, "").trim();
    if (line === "") continue;
    let options: Record<string, string> = {};
    let rest = line;
    const optMatch = /^(\S+)\s+\[([^\]]*)\]\s+(.*)$/.exec(line);
    if (optMatch) {
      rest = `${optMatch[1]} ${optMatch[3]}`;
      options = Object.fromEntries(
        optMatch[2]!
          .trim()
          .split(/\s+/)
          .map((kv) => {
            const eq = kv.indexOf("=");
            return eq < 0 ? [kv, ""] : [kv.slice(0, eq).toLowerCase(), kv.slice(eq + 1)];
          }),
      );
    }
    const [type, uri, suite, ...components] = rest.split(/\s+/);
    if (!type || !uri || !suite) continue;
    entries.push({
      types: [type],
      uris: [uri],
      suites: [suite],
      components,
      ...(options["signed-by"] ? { signedBy: options["signed-by"] } : {}),
      enabled: true,
      source,
    });
  }
  return entries;
}

function parseDeb822Sources(text: string, source: string): AptEntry[] {
  const entries: AptEntry[] = [];
  const stanzas = text
    .split("\n")
    .filter((line) => !line.startsWith("#"))
    .join("\n")
    .split(/\n\s*\n/);
  for (const stanza of stanzas) {
    const fields = new Map<string, string>();
    let current: string | undefined;
    for (const line of stanza.split("\n")) {
      if (/^\s/.test(line) && current !== undefined) {
        fields.set(current, `${fields.get(current) ?? ""}\n${line.trim()}`);
        continue;
      }
      const colon = line.indexOf(":");
      if (colon <= 0) continue;
      current = line.slice(0, colon).trim().toLowerCase();
      fields.set(current, line.slice(colon + 1).trim());
    }
    const words = (key: string): string[] => (fields.get(key) ?? "").split(/\s+/).filter(Boolean);
    if (!fields.has("uris")) continue;
    const signedBy = fields.get("signed-by");
    entries.push({
      types: words("types"),
      uris: words("uris"),
      suites: words("suites"),
      components: words("components"),
      ...(signedBy && !signedBy.includes("\n") ? { signedBy } : {}),
      enabled: (fields.get("enabled") ?? "yes").toLowerCase() !== "no",
      source,
    });
  }
  return entries;
}

async function readAptEntries(): Promise<AptEntry[]> {
  const entries: AptEntry[] = [];
  const main = "/etc/apt/sources.list";
  const mainText = await readText(main);
  if (mainText !== undefined) entries.push(...parseOneLineSources(mainText, main));
  const dir = "/etc/apt/sources.list.d";
  let names: string[] = [];
  try {
    names = (await fs.readdir(dir)).sort();
  } catch {
    // no directory
  }
  for (const name of names) {
    const file = path.join(dir, name);
    const text = name.endsWith(".list") || name.endsWith(".sources") ? await readText(file) : "";
    if (!text) continue;
    entries.push(
      ...(name.endsWith(".list")
        ? parseOneLineSources(text, file)
        : parseDeb822Sources(text, file)),
    );
  }
  return entries;
}

/**
 * The Debian mirror for `suite` as this machine's apt is configured (K8SLAB_TEST_MIRROR overrides).
 * Picks the first enabled `deb` entry that lists exactly that suite (not -updates/-security).
 */
export async function findAptMirror(suite = ROOTFS_SUITE): Promise<AptMirror | undefined> {
  const override = process.env.K8SLAB_TEST_MIRROR;
  if (override) return { uri: override, source: "K8SLAB_TEST_MIRROR" };
  const usable = (uri: string): boolean => /^(https?|file):/.test(uri);
  const entry = (await readAptEntries()).find(
    (e) =>
      e.enabled &&
      e.types.includes("deb") &&
      e.suites.includes(suite) &&
      (e.components.length === 0 || e.components.includes("main")) &&
      e.uris.some(usable),
  );
  if (!entry) return undefined;
  const keyring = entry.signedBy?.startsWith("/")
    ? entry.signedBy
    : existsSync("/usr/share/keyrings/debian-archive-keyring.gpg")
      ? "/usr/share/keyrings/debian-archive-keyring.gpg"
      : undefined;
  return {
    uri: entry.uris.find(usable)!,
    ...(keyring ? { keyring } : {}),
    source: entry.source,
  };
}

// ---------------------------------------------------------------------------------------------
// rootfs cache

export function rootfsCacheDir(): string {
  if (process.env.K8SLAB_TEST_CACHE) return process.env.K8SLAB_TEST_CACHE;
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");
  return path.join(base, "k8slab-test");
}

async function rootfsPath(): Promise<string> {
  const script = await fs.readFile(BUILD_SCRIPT);
  const key = createHash("sha256")
    .update(
      JSON.stringify({
        suite: ROOTFS_SUITE,
        packages: ROOTFS_PACKAGES,
        format: ROOTFS_FORMAT,
        script: createHash("sha256").update(script).digest("hex"),
      }),
    )
    .digest("hex")
    .slice(0, 16);
  return path.join(rootfsCacheDir(), `rootfs-${ROOTFS_SUITE}-${key}`);
}

/**
 * Returns the cached rootfs directory, building it with debootstrap first if it is missing.
 * Parallel callers (other test processes) wait on a lock and build it once.
 */
export async function ensureRootfs(
  opts: { onProgress?: (msg: string) => void } = {},
): Promise<string> {
  const target = await rootfsPath();
  if (existsSync(path.join(target, "etc", "k8slab-test-rootfs"))) return target;
  const mirror = await findAptMirror();
  if (!mirror) {
    throw new Error(
      `no apt source for Debian ${ROOTFS_SUITE} in /etc/apt/sources.list{,.d/}; set K8SLAB_TEST_MIRROR`,
    );
  }
  opts.onProgress?.(`building ${target} from ${mirror.uri} (${mirror.source})`);
  const args = [
    "--mirror",
    mirror.uri,
    "--suite",
    ROOTFS_SUITE,
    "--packages",
    ROOTFS_PACKAGES.join(","),
    "--out",
    target,
    ...(mirror.keyring ? ["--keyring", mirror.keyring] : []),
  ];
  // The proxy variables (http_proxy, ...) pass through: the environment is extended, not replaced.
  const subprocess = execa("bash", [BUILD_SCRIPT, ...args], {
    reject: false,
    timeout: BUILD_TIMEOUT_MS,
    stdin: "ignore",
    env: { PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin`, LC_ALL: "C" },
    all: true,
  });
  const onProgress = opts.onProgress;
  if (onProgress) {
    let pending = "";
    subprocess.all?.on("data", (chunk: Buffer) => {
      pending += chunk.toString();
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) if (line.trim() !== "") onProgress(line);
    });
  }
  const result = await subprocess;
  if (result.failed) {
    throw new Error(
      `building the test rootfs failed (${result.timedOut ? "timed out" : `exit ${result.exitCode ?? result.signal ?? "?"}`}):\n${tail(result.all ?? "")}`,
    );
  }
  return target;
}

// ---------------------------------------------------------------------------------------------
// availability

export async function nspawnAvailable(): Promise<{ ok: boolean; reason?: string }> {
  if (process.platform !== "linux") return { ok: false, reason: "not Linux" };
  if (!isRoot()) return { ok: false, reason: "needs root (namespaces, mounts, nspawn)" };
  const missing: string[] = [];
  for (const tool of REQUIRED_TOOLS) if (!(await findTool(tool))) missing.push(tool);
  if (missing.length > 0) {
    return {
      ok: false,
      reason: `missing ${missing.join(", ")} (Debian packages: debootstrap systemd-container iproute2 util-linux)`,
    };
  }
  const cached = existsSync(path.join(await rootfsPath(), "etc", "k8slab-test-rootfs"));
  if (!cached && !(await findAptMirror())) {
    return {
      ok: false,
      reason: `no cached rootfs and no apt source for Debian ${ROOTFS_SUITE} (set K8SLAB_TEST_MIRROR)`,
    };
  }
  if (!existsSync("/run/systemd/system") && (await cgroupHierarchies()).length === 0) {
    return { ok: false, reason: "no cgroup2 or name=systemd cgroup hierarchy mounted" };
  }
  return { ok: true };
}

// ---------------------------------------------------------------------------------------------
// cgroups (only where systemd is not PID 1; see the header comment)

/** Directories of this process's own cgroup in the hierarchies nspawn uses. */
async function cgroupHierarchies(): Promise<string[]> {
  const mountinfo = (await readText("/proc/self/mountinfo")) ?? "";
  const own = (await readText("/proc/self/cgroup")) ?? "";
  const ownPath = (match: (controllers: string) => boolean): string | undefined => {
    for (const line of own.split("\n")) {
      const [, , controllers, p] = /^(\d+):([^:]*):(.*)$/.exec(line) ?? [];
      if (controllers !== undefined && p !== undefined && match(controllers)) return p;
    }
    return undefined;
  };
  const dirs: string[] = [];
  for (const line of mountinfo.split("\n")) {
    const [left, right] = line.split(" - ");
    if (!left || !right) continue;
    const l = left.split(" ");
    const r = right.split(" ");
    const root = l[3];
    const mountPoint = l[4];
    const fstype = r[0];
    const superOpts = r[2] ?? "";
    if (!root || !mountPoint) continue;
    let p: string | undefined;
    if (fstype === "cgroup2") p = ownPath((c) => c === "");
    else if (fstype === "cgroup" && superOpts.split(",").includes("name=systemd"))
      p = ownPath((c) => c === "name=systemd");
    else continue;
    if (p === undefined) continue;
    const rel = root === "/" ? p : p.startsWith(root) ? p.slice(root.length) : undefined;
    if (rel === undefined) continue;
    dirs.push(path.join(mountPoint, rel));
  }
  return dirs;
}

async function removeCgroupTree(dir: string): Promise<void> {
  let entries: Dirent[];
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) if (e.isDirectory()) await removeCgroupTree(path.join(dir, e.name));
  // A cgroup is removable once it has no processes; the last ones may still be exiting.
  for (let attempt = 0; attempt < 50; attempt++) {
    try {
      await fs.rmdir(dir);
      return;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return;
      if (code !== "EBUSY" || attempt === 49) throw error;
      await sleep(100);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// processes

interface ProcInfo {
  ppid: number;
  nsPid: string[];
}

async function procInfo(pid: number): Promise<ProcInfo | undefined> {
  const status = await readText(`/proc/${pid}/status`);
  if (status === undefined) return undefined;
  const ppid = Number(/^PPid:\s+(\d+)/m.exec(status)?.[1] ?? "0");
  const nsPid = (/^NSpid:\s+(.*)$/m.exec(status)?.[1] ?? "").trim().split(/\s+/);
  return { ppid, nsPid };
}

/** The container's PID 1 as seen from the host: the child of nspawn that is PID 1 in its ns. */
async function findLeader(nspawnPid: number): Promise<number | undefined> {
  const children =
    (await readText(`/proc/${nspawnPid}/task/${nspawnPid}/children`))
      ?.trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number) ?? [];
  let candidates = children;
  if (candidates.length === 0) {
    // Kernels without CONFIG_PROC_CHILDREN: scan /proc.
    candidates = (await fs.readdir("/proc")).filter((n) => /^\d+$/.test(n)).map(Number);
  }
  for (const pid of candidates) {
    const info = await procInfo(pid);
    if (info && info.ppid === nspawnPid && info.nsPid.length > 1 && info.nsPid.at(-1) === "1") {
      return pid;
    }
  }
  return undefined;
}

async function cgroupProcs(dir: string, into: Set<number>): Promise<void> {
  const procs = await readText(path.join(dir, "cgroup.procs"));
  for (const pid of procs?.split("\n") ?? []) if (/^\d+$/.test(pid)) into.add(Number(pid));
  let entries: Dirent[] = [];
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) if (e.isDirectory()) await cgroupProcs(path.join(dir, e.name), into);
}

/** Host PIDs of the live processes in a network namespace (by inode) or in cgroup trees. */
async function processesIn(netnsIno: number | undefined, cgroups: string[]): Promise<number[]> {
  const pids = new Set<number>();
  for (const cg of cgroups) await cgroupProcs(cg, pids);
  if (netnsIno !== undefined) {
    for (const name of await fs.readdir("/proc")) {
      if (!/^\d+$/.test(name)) continue;
      try {
        if ((await fs.stat(`/proc/${name}/ns/net`)).ino === netnsIno) pids.add(Number(name));
      } catch {
        // gone, or a zombie (no namespaces left)
      }
    }
  }
  pids.delete(process.pid);
  return [...pids];
}

// ---------------------------------------------------------------------------------------------
// cluster

let clusterCounter = 0;

function validateSpecs(nodes: NodeSpec[]): void {
  if (nodes.length === 0) throw new Error("startNspawnCluster: no nodes");
  const names = new Set<string>();
  const ips = new Set<string>();
  for (const n of nodes) {
    if (!/^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$/.test(n.name)) {
      throw new Error(`startNspawnCluster: bad node name ${JSON.stringify(n.name)}`);
    }
    const octets = n.ip.split(".");
    if (
      octets.length !== 4 ||
      octets.some((o) => !/^\d{1,3}$/.test(o) || Number(o) > 255) ||
      !Number.isInteger(n.prefix) ||
      n.prefix < 1 ||
      n.prefix > 32
    ) {
      throw new Error(`startNspawnCluster: bad address ${n.ip}/${n.prefix} for ${n.name}`);
    }
    if (names.has(n.name)) throw new Error(`startNspawnCluster: duplicate name ${n.name}`);
    if (ips.has(n.ip)) throw new Error(`startNspawnCluster: duplicate ip ${n.ip}`);
    names.add(n.name);
    ips.add(n.ip);
  }
}

interface NodeState {
  spec: NodeSpec;
  index: number;
  machine: string;
  netns: string;
  /** Inode of the node's network namespace, to find every process inside it. */
  netnsIno?: number;
  dir: string;
  root: string;
  mounted: boolean;
  cgroups: string[];
  nspawn?: ReturnType<typeof startNspawn>;
  nspawnPid?: number;
  exited: boolean;
  leader?: number;
  logFile: string;
}

/** SIGKILLs whatever still runs in the node (bounded: 3 rounds, about 5 s each). */
async function killNodeProcesses(s: NodeState): Promise<void> {
  for (let round = 0; round < 3; round++) {
    let pids = await processesIn(s.netnsIno, s.cgroups);
    if (pids.length === 0) return;
    for (const pid of pids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    for (let i = 0; i < 50 && pids.length > 0; i++) {
      await sleep(100);
      pids = await processesIn(s.netnsIno, s.cgroups);
    }
    if (pids.length === 0) return;
  }
  throw new Error(`processes of ${s.machine} survived SIGKILL`);
}

function startNspawn(file: string, args: string[], logFile: string) {
  return execa(file, args, {
    reject: false,
    stdin: "ignore",
    stdout: { file: logFile, append: true },
    stderr: { file: logFile, append: true },
    // nspawn reads these; make sure the runner's settings don't leak in.
    env: {
      PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin`,
      LC_ALL: "C",
      SYSTEMD_LOG_COLOR: "0",
    },
    extendEnv: false,
  });
}

/** Runs argv inside the container as root with a clean login-like environment. */
function nodeExecArgs(leader: number, argv: string[], timeoutSec: number): string[] {
  return [
    "--target",
    String(leader),
    "--all",
    "--root",
    "--wd", // the container init's working directory, i.e. / inside the container
    "--",
    "/usr/bin/env",
    "-i",
    `PATH=${NODE_PATH}`,
    "HOME=/root",
    "USER=root",
    "LOGNAME=root",
    "SHELL=/bin/bash",
    "TERM=dumb",
    "LANG=C.UTF-8",
    "DEBIAN_FRONTEND=noninteractive",
    "SYSTEMD_PAGER=",
    "SYSTEMD_COLORS=0",
    // timeout(1) kills the whole process group of the command, inside the container.
    "timeout",
    "--kill-after=5",
    String(timeoutSec),
    ...argv,
  ];
}

export async function startNspawnCluster(
  nodes: NodeSpec[],
  opts: { bootTimeoutMs?: number } = {},
): Promise<NspawnCluster> {
  validateSpecs(nodes);
  const available = await nspawnAvailable();
  if (!available.ok) throw new Error(`nspawn cluster not available: ${available.reason ?? "?"}`);
  const rootfs = await ensureRootfs();
  const nspawnBin = (await findTool("systemd-nspawn"))!;
  const nsenterBin = (await findTool("nsenter"))!;
  const ipBin = (await findTool("ip"))!;
  const hostHasSystemd = existsSync("/run/systemd/system");

  const id = `k8slab-t${process.pid}c${clusterCounter++}`;
  const bridgeNs = `${id}-br`;
  const workDir = await fs.mkdtemp(path.join(os.tmpdir(), `${id}-`));
  const createdNetns: string[] = [];
  const states: NodeState[] = nodes.map((spec, index) => {
    const dir = path.join(workDir, `n${index}`);
    return {
      spec,
      index,
      machine: `${id}-${spec.name}`.slice(0, 64),
      netns: `${id}-n${index}`,
      dir,
      root: path.join(dir, "root"),
      mounted: false,
      cgroups: [],
      exited: false,
      logFile: path.join(dir, "nspawn.log"),
    };
  });
  const ip = (args: string[]): Promise<string> => run(ipBin, args);

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopping ??= teardown());

  async function teardown(): Promise<void> {
    const errors: string[] = [];
    const attempt = async (what: string, fn: () => Promise<void>): Promise<void> => {
      try {
        await fn();
      } catch (error) {
        errors.push(`${what}: ${errorMessage(error)}`);
      }
    };
    // 1. Power off: SIGTERM makes nspawn send SIGRTMIN+3 to the container's systemd. Then every
    //    process still in the node's network namespace or cgroups is killed: that also catches a
    //    container whose nspawn died (a SIGTERM during nspawn's own start-up kills it before it
    //    handles signals, orphaning the container) and commands still running through exec.
    await Promise.all(
      states.map((s) =>
        attempt(`stop ${s.spec.name}`, async () => {
          if (s.nspawn && !s.exited) {
            s.nspawn.kill("SIGTERM");
            const done = await Promise.race([
              s.nspawn.then(() => true),
              sleep(POWEROFF_TIMEOUT_MS).then(() => false),
            ]);
            if (!done) s.nspawn.kill("SIGKILL");
          }
          await killNodeProcesses(s);
          if (s.nspawn && !s.exited) {
            await Promise.race([s.nspawn, sleep(10_000)]);
            if (!s.exited)
              throw new Error(`systemd-nspawn (pid ${s.nspawnPid ?? "?"}) did not exit`);
          }
        }),
      ),
    );
    // 2. Unmount and delete the node copies.
    for (const s of states) {
      await attempt(`unmount ${s.root}`, async () => {
        if (!s.mounted) return;
        for (let i = 0; ; i++) {
          try {
            await run("umount", [s.root]);
            break;
          } catch (error) {
            if (i >= 20) {
              await run("umount", ["--lazy", s.root]);
              throw new Error(`busy, lazily unmounted: ${errorMessage(error)}`);
            }
            await sleep(250);
          }
        }
        s.mounted = false;
      });
      await attempt(`nspawn propagate dir of ${s.machine}`, async () => {
        await fs.rm(path.join("/run/systemd/nspawn/propagate", s.machine), {
          recursive: true,
          force: true,
        });
      });
      for (const cg of s.cgroups) {
        await attempt(`remove cgroup ${cg}`, () => removeCgroupTree(cg));
      }
    }
    await attempt(`remove ${workDir}`, async () => {
      const mountinfo = (await readText("/proc/self/mountinfo")) ?? "";
      if (mountinfo.includes(` ${workDir}/`)) throw new Error("still has mounts; not removing");
      await run("rm", ["-rf", "--one-file-system", workDir], { timeoutMs: 120_000 });
    });
    // 3. Namespaces: deleting a namespace destroys its veth ends and the bridge.
    for (const ns of [...createdNetns].reverse()) {
      await attempt(`delete netns ${ns}`, () => ip(["netns", "delete", ns]).then(() => undefined));
    }
    createdNetns.length = 0;
    if (errors.length > 0) throw new Error(`nspawn cluster ${id} teardown:\n${errors.join("\n")}`);
  }

  const hostsFile = [
    "127.0.0.1\tlocalhost",
    "::1\tlocalhost ip6-localhost ip6-loopback",
    ...nodes.map((n) => `${n.ip}\t${n.name}`),
    "",
  ].join("\n");

  async function execIn(
    s: NodeState,
    argv: string[],
    opts: { timeoutMs?: number; inputFile?: string } = {},
  ): Promise<ExecResult> {
    if (s.leader === undefined || s.exited || stopping) {
      throw new Error(`node ${s.spec.name} is not running`);
    }
    const timeoutMs = opts.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS;
    const result = await execa(
      nsenterBin,
      nodeExecArgs(s.leader, argv, Math.max(1, Math.ceil(timeoutMs / 1000))),
      {
        reject: false,
        // Backstop only: timeout(1) inside the container ends the command first.
        timeout: timeoutMs + 15_000,
        ...(opts.inputFile ? { inputFile: opts.inputFile } : { stdin: "ignore" as const }),
        extendEnv: false,
        env: { PATH: NODE_PATH },
        stripFinalNewline: false,
      },
    );
    return {
      stdout: result.stdout,
      stderr: result.stderr,
      // Shell convention: 128 + signal number when the command was killed by a signal.
      exitCode:
        result.exitCode ??
        (result.timedOut ? 124 : 128 + (result.signal ? os.constants.signals[result.signal] : 0)),
    };
  }

  function makeNode(s: NodeState): NspawnNode {
    return {
      name: s.spec.name,
      ip: s.spec.ip,
      leader: s.leader!,
      exec: (cmd, opts) => execIn(s, ["/bin/bash", "-c", cmd], opts),
      copyIn: async (hostPath, nodePath) => {
        if (!nodePath.startsWith("/")) throw new Error(`copyIn: ${nodePath} is not absolute`);
        const stat = await fs.stat(hostPath);
        let result: ExecResult;
        if (stat.isDirectory()) {
          // Packed on the host, unpacked by tar inside the node: symlinks in the node's tree
          // resolve inside the node, never on the host.
          const tarFile = path.join(workDir, `copy-${process.hrtime.bigint()}.tar`);
          await run("tar", ["-C", hostPath, "-cf", tarFile, "."], { timeoutMs: 120_000 });
          try {
            result = await execIn(
              s,
              [
                "/bin/bash",
                "-c",
                'mkdir -p -- "$1" && tar -C "$1" --no-same-owner -xf -',
                "bash",
                nodePath,
              ],
              { inputFile: tarFile },
            );
          } finally {
            await fs.rm(tarFile, { force: true });
          }
        } else {
          const mode = (stat.mode & 0o7777).toString(8);
          result = await execIn(
            s,
            [
              "/bin/bash",
              "-c",
              'mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" -- "$1"',
              "bash",
              nodePath,
              mode,
            ],
            { inputFile: hostPath },
          );
        }
        if (result.exitCode !== 0) {
          throw new Error(
            `copyIn ${hostPath} -> ${s.spec.name}:${nodePath} failed (${result.exitCode}): ${tail(result.stderr)}`,
          );
        }
      },
    };
  }

  const bootTimeoutMs = opts.bootTimeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS;
  try {
    // Network: one bridge namespace, one namespace per node.
    await ip(["netns", "add", bridgeNs]);
    createdNetns.push(bridgeNs);
    await ip(["-n", bridgeNs, "link", "set", "lo", "up"]);
    await ip(["-n", bridgeNs, "link", "add", "br0", "type", "bridge"]);
    await ip(["-n", bridgeNs, "link", "set", "br0", "up"]);
    for (const s of states) {
      await ip(["netns", "add", s.netns]);
      s.netnsIno = (await fs.stat(`/run/netns/${s.netns}`)).ino;
      createdNetns.push(s.netns);
      await ip(["-n", s.netns, "link", "set", "lo", "up"]);
      const hostEnd = `v${s.index}`;
      await ip([
        "-n",
        bridgeNs,
        "link",
        "add",
        hostEnd,
        "type",
        "veth",
        "peer",
        "name",
        "eth1",
        "netns",
        s.netns,
      ]);
      await ip(["-n", bridgeNs, "link", "set", hostEnd, "master", "br0", "up"]);
      await ip(["-n", s.netns, "addr", "add", `${s.spec.ip}/${s.spec.prefix}`, "dev", "eth1"]);
      await ip(["-n", s.netns, "link", "set", "eth1", "up"]);
    }

    // Root filesystems: an overlay over the cache (instant), else a full copy (where overlayfs
    // cannot be mounted, e.g. a cache that itself lies on overlayfs; K8SLAB_TEST_ROOTFS_COPY=1
    // forces the copy). cp -a keeps xattrs, so file capabilities survive.
    const forceCopy = process.env.K8SLAB_TEST_ROOTFS_COPY === "1";
    for (const s of states) {
      const upper = path.join(s.dir, "upper");
      const work = path.join(s.dir, "work");
      await fs.mkdir(upper, { recursive: true });
      await fs.mkdir(work, { recursive: true });
      await fs.mkdir(s.root, { recursive: true });
      try {
        if (forceCopy) throw new Error("copy forced");
        await run("mount", [
          "-t",
          "overlay",
          "overlay",
          "-o",
          `lowerdir=${rootfs},upperdir=${upper},workdir=${work}`,
          s.root,
        ]);
        s.mounted = true;
      } catch {
        await fs.rm(s.root, { recursive: true, force: true });
        await run("cp", ["--reflink=auto", "-a", "--", rootfs, s.root], { timeoutMs: 600_000 });
      }
      const hosts = path.join(s.root, "etc", "hosts");
      await fs.rm(hosts, { force: true });
      await fs.writeFile(hosts, hostsFile);
    }

    // cgroups: one per container, unless systemd (PID 1) allocates scopes for nspawn.
    const hierarchies = hostHasSystemd ? [] : await cgroupHierarchies();
    for (const s of states) {
      for (const h of hierarchies) {
        const dir = path.join(h, s.machine);
        await fs.mkdir(dir);
        s.cgroups.push(dir);
      }
    }

    // Boot all nodes in parallel.
    for (const s of states) {
      const nspawnArgs = [
        "--quiet",
        "--boot",
        `--directory=${s.root}`,
        `--machine=${s.machine}`,
        `--hostname=${s.spec.name}`,
        "--register=no",
        ...(hostHasSystemd ? [] : ["--keep-unit"]),
        `--network-namespace-path=/run/netns/${s.netns}`,
        "--console=passive",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
      ];
      // `sh` moves itself into the node's cgroups, then becomes nspawn.
      s.nspawn = startNspawn(
        "/bin/sh",
        [
          "-c",
          'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1/cgroup.procs" || exit 97; shift; n=$((n-1)); done; exec "$@"',
          "sh",
          String(s.cgroups.length),
          ...s.cgroups,
          nspawnBin,
          ...nspawnArgs,
        ],
        s.logFile,
      );
      s.nspawnPid = s.nspawn.pid;
      void s.nspawn.then(() => {
        s.exited = true;
      });
    }

    const deadline = Date.now() + bootTimeoutMs;
    await Promise.all(
      states.map(async (s) => {
        const bootLog = async (): Promise<string> => tail((await readText(s.logFile)) ?? "", 20);
        // The container's PID 1.
        while (s.leader === undefined) {
          if (s.exited || s.nspawnPid === undefined) {
            throw new Error(
              `${s.spec.name}: systemd-nspawn exited during boot:\n${await bootLog()}`,
            );
          }
          if (Date.now() > deadline) {
            throw new Error(`${s.spec.name}: no container process after ${bootTimeoutMs} ms`);
          }
          s.leader = await findLeader(s.nspawnPid);
          if (s.leader === undefined) await sleep(50);
        }
        // systemd up: is-system-running says running (or degraded: some unit failed, but
        // the manager is done starting). Bounded by the deadline; ~4 polls a second.
        let last = "";
        for (;;) {
          if (s.exited) {
            throw new Error(
              `${s.spec.name}: systemd-nspawn exited during boot:\n${await bootLog()}`,
            );
          }
          const r = await execIn(s, ["systemctl", "is-system-running"], { timeoutMs: 10_000 });
          last = `${r.stdout.trim()} ${r.stderr.trim()}`.trim();
          const state = r.stdout.trim();
          if (state === "running" || state === "degraded") return;
          if (Date.now() > deadline) {
            throw new Error(
              `${s.spec.name}: systemd not up after ${bootTimeoutMs} ms (last: ${last})\n${await bootLog()}`,
            );
          }
          await sleep(250);
        }
      }),
    );
  } catch (error) {
    try {
      await stop();
    } catch (cleanupError) {
      throw new AggregateError(
        [error, cleanupError],
        `${errorMessage(error)}\n(cleaning up also failed: ${errorMessage(cleanupError)})`,
      );
    }
    throw error;
  }

  return { id, workDir, bridgeNetns: bridgeNs, nodes: states.map(makeNode), stop };
}
