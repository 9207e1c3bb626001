/**
 * Test harness for real Vagrant VMs: a private libvirt (libvirtd + virtlogd) that runs inside a
 * network namespace and a mount namespace the harness creates, so `vagrant up` with
 * vagrant-libvirt boots QEMU VMs (software emulation, `libvirt.driver = "qemu"`) whose management
 * network (192.168.121.0/24) and private networks exist only inside that namespace. No packet
 * leaves it: the namespace has only `lo` and the bridges libvirt makes, and no default route.
 *
 * Layout of one environment (id `k8slab-lv<pid>x<n>`):
 *
 *   netns <id>                       lo + libvirt's bridges, dnsmasq, qemu, vagrant's ssh
 *   mount namespace                  held by a `sleep infinity` started by unshare; entered with
 *                                    nsenter --mount=/proc/<holder>/ns/mnt --net=/run/netns/<id>
 *   <tmp>/<id>-XXXX/                 stateDir (removed by stop())
 *     etc-libvirt/                    copy of /etc/libvirt, bound over /etc/libvirt in the ns
 *     var-lib-libvirt/ var-log-libvirt/ var-cache-libvirt/   bound over /var/{lib,log,cache}/libvirt
 *     vagrant-home/ tmp/ logs/        VAGRANT_HOME, TMPDIR, daemon output
 *
 * Inside the mount namespace /run is a fresh tmpfs (libvirt's sockets, pid files and state in
 * /run/libvirt), /sys is a sysfs of the network namespace (as `ip netns exec` does; the cgroup
 * mounts are carried over), and /etc/libvirt, /var/lib/libvirt, /var/log/libvirt,
 * /var/cache/libvirt are the private copies above. So the networks vagrant-libvirt defines
 * (written under /etc/libvirt/qemu/networks), the storage pool and its volumes, domain XML,
 * leases and logs all land in stateDir, and a system libvirtd, if any, is neither seen nor touched.
 * Everything else (/tmp, the repository, the box cache) is shared with the host, so paths mean
 * the same inside and outside.
 *
 * What this host needs (found by trying, Debian 12 without systemd as PID 1):
 * - The daemons are started by hand in the foreground (no systemd, no socket activation);
 *   virtlogd is started first: libvirtd (qemu's stdio_handler "logd") connects to its socket.
 * - qemu runs as root with security_driver "none", no private /dev namespace and no cgroup
 *   controllers: nothing here needs isolation from the test, and every one of those features
 *   depends on host setup that test machines may not have.
 */
import { execa } from "execa";
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { existsSync, openSync, closeSync, statSync, promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { findAptMirror } from "./nspawn-cluster.js";
import { alive, findTool, hostPath, isRoot, readText, run, signal, tail } from "./host.js";
import { singleQuote } from "../../src/util/quote.js";

export interface LibvirtExecResult {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
  /** stdout and stderr interleaved. */
  all: string;
  timedOut: boolean;
  /** Wall time in ms. */
  durationMs: number;
}

export interface LibvirtExecOptions {
  /** Working directory inside the namespace (host paths are the same there). */
  cwd?: string;
  /** Added to `env` of the environment (which already extends process.env). */
  env?: Record<string, string>;
  /** Default 120 s; the command is killed (SIGTERM, then SIGKILL after 5 s) when it expires. */
  timeoutMs?: number;
  input?: string;
  /** Called with each line of output as it arrives (progress for long commands). */
  onLine?: (line: string) => void;
}

export interface LibvirtEnv {
  /** Unique per environment; the name of the network namespace and prefix of stateDir. */
  id: string;
  /** Network namespace name (`ip netns exec <netns> ...` from the host). */
  netns: string;
  /** Host directory holding everything this environment writes (removed by stop()). */
  stateDir: string;
  /**
   * Environment for vagrant and virsh: process.env plus VAGRANT_HOME (private, in stateDir),
   * VAGRANT_CHECKPOINT_DISABLE=1, VAGRANT_DEFAULT_PROVIDER=libvirt, LIBVIRT_DEFAULT_URI
   * (qemu:///system, i.e. the private libvirtd), TMPDIR in stateDir and a PATH with the sbin dirs.
   */
  env: Record<string, string>;
  /** `nsenter` arguments that enter this environment's namespaces (end with `--`). */
  enterArgs(cwd?: string): string[];
  /** Run a program inside the namespaces with `env`; never throws for a non-zero exit. */
  exec(cmd: string, args: readonly string[], opts?: LibvirtExecOptions): Promise<LibvirtExecResult>;
  /** Tail of libvirtd's and virtlogd's output and of the domains' qemu logs, for failures. */
  diagnostics(lines?: number): Promise<string>;
  /**
   * Idempotent: destroys and undefines every domain, network, volume and pool the private
   * libvirtd knows, stops the daemons, kills whatever still runs in the namespaces, unmounts and
   * deletes the namespaces and stateDir, then checks that nothing is left (throws listing it).
   */
  stop(): Promise<void>;
  /** What of this environment still exists (empty after a successful stop()). */
  leftovers(): Promise<string[]>;
}

export interface Availability {
  ok: boolean;
  reason?: string;
}

/** Debian packages that running VMs needs on the host (install with --no-install-recommends). */
export const LIBVIRT_E2E_PACKAGES: readonly string[] = [
  "vagrant",
  "vagrant-libvirt",
  "libvirt-daemon-system",
  "qemu-system-x86",
  "qemu-utils",
  "dnsmasq-base",
  "iptables",
  "iproute2",
  "util-linux",
];
/** And those scripts/build-test-box.sh needs when the box is not cached yet. */
export const TEST_BOX_BUILD_PACKAGES: readonly string[] = [
  "debootstrap",
  "debian-archive-keyring",
  "extlinux",
  "syslinux-common",
  "fdisk",
  "e2fsprogs",
  "util-linux",
  "qemu-utils",
  "vagrant",
];

const REQUIRED_TOOLS = [
  "ip",
  "nsenter",
  "unshare",
  "mount",
  "umount",
  "libvirtd",
  "virtlogd",
  "virsh",
  "vagrant",
  "qemu-system-x86_64",
  "qemu-img",
  "dnsmasq",
];
const BOX_BUILD_TOOLS = ["debootstrap", "losetup", "sfdisk", "mkfs.ext4", "extlinux", "flock"];
const BOX_SCRIPT = fileURLToPath(new URL("../../scripts/build-test-box.sh", import.meta.url));
const BOX_BUILD_TIMEOUT_MS = 30 * 60_000;
const DAEMON_READY_TIMEOUT_MS = 60_000;
const VIRSH_TIMEOUT_MS = 30_000;

let counter = 0;

// ---------------------------------------------------------------------------------------------
// small utilities

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function waitGone(pids: readonly number[], timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; i < 400 && Date.now() < deadline; i++) {
    if (pids.every((pid) => !alive(pid))) return true;
    await sleep(50);
  }
  return pids.every((pid) => !alive(pid));
}

async function killAll(pids: readonly number[]): Promise<void> {
  for (const pid of pids) signal(pid, "SIGTERM");
  if (!(await waitGone(pids, 5_000))) {
    for (const pid of pids) signal(pid, "SIGKILL");
    await waitGone(pids, 3_000);
  }
}

function inode(file: string): number | undefined {
  try {
    return statSync(file).ino;
  } catch {
    return undefined;
  }
}

/** Processes whose network or mount namespace is one of the given nsfs inodes. */
async function pidsInNamespaces(inodes: readonly number[]): Promise<number[]> {
  if (inodes.length === 0) return [];
  const wanted = new Set(inodes);
  const pids: number[] = [];
  for (const name of await fs.readdir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    for (const ns of ["net", "mnt"]) {
      const ino = inode(`/proc/${pid}/ns/${ns}`);
      if (ino !== undefined && wanted.has(ino)) {
        pids.push(pid);
        break;
      }
    }
  }
  return pids;
}

function pidsInNamespacesSync(inodes: readonly number[]): number[] {
  const wanted = new Set(inodes);
  const pids: number[] = [];
  let names: string[] = [];
  try {
    names = execFileSync("ls", ["/proc"], { encoding: "utf8" }).split("\n");
  } catch {
    return pids;
  }
  for (const name of names) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    for (const ns of ["net", "mnt"]) {
      const ino = inode(`/proc/${name}/ns/${ns}`);
      if (ino !== undefined && wanted.has(ino)) {
        pids.push(Number(name));
        break;
      }
    }
  }
  return pids;
}

async function mountsUnder(dir: string): Promise<string[]> {
  const mountinfo = (await readText("/proc/self/mountinfo")) ?? "";
  const points: string[] = [];
  for (const line of mountinfo.split("\n")) {
    const mountPoint = line.split(" ")[4];
    if (mountPoint === undefined) continue;
    const decoded = mountPoint.replace(/\\(\d{3})/g, (_, o: string) =>
      String.fromCharCode(parseInt(o, 8)),
    );
    if (decoded === dir || decoded.startsWith(`${dir}/`)) points.push(decoded);
  }
  return points;
}

/** Loop devices whose backing file lies under dir. */
async function loopDevicesUnder(dir: string): Promise<string[]> {
  const found: string[] = [];
  let names: string[] = [];
  try {
    names = await fs.readdir("/sys/block");
  } catch {
    return found;
  }
  for (const name of names) {
    if (!name.startsWith("loop")) continue;
    const backing = (await readText(`/sys/block/${name}/loop/backing_file`))?.trim();
    if (backing && (backing === dir || backing.startsWith(`${dir}/`))) {
      found.push(`/dev/${name} (${backing})`);
    }
  }
  return found;
}

/** Directories under /sys/fs/cgroup (3 levels) that libvirt makes for machines. */
async function libvirtCgroups(): Promise<string[]> {
  const found: string[] = [];
  const walk = async (dir: string, depth: number): Promise<void> => {
    let entries: string[] = [];
    try {
      entries = (await fs.readdir(dir, { withFileTypes: true }))
        .filter((e) => e.isDirectory())
        .map((e) => e.name);
    } catch {
      return;
    }
    for (const name of entries) {
      const full = path.join(dir, name);
      if (/^machine(\.slice)?$/.test(name) || name.includes("libvirt")) found.push(full);
      if (depth > 0) await walk(full, depth - 1);
    }
  };
  await walk("/sys/fs/cgroup", 3);
  return found;
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return (await fs.readdir(dir)).sort();
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------------------------------------
// availability

async function missingPackages(packages: readonly string[]): Promise<string[] | undefined> {
  if (!(await findTool("dpkg-query"))) return undefined;
  const result = await execa(
    "dpkg-query",
    ["-W", "-f=${Package} ${db:Status-Status}\n", ...packages],
    { reject: false, timeout: 15_000, env: { PATH: hostPath(), LC_ALL: "C" } },
  );
  const installed = new Set(
    String(result.stdout ?? "")
      .split("\n")
      .filter((l) => l.endsWith(" installed"))
      .map((l) => l.split(" ")[0]),
  );
  return packages.filter((p) => !installed.has(p));
}

/**
 * Whether startLibvirtEnv() and ensureTestBox() can work here: Linux, root, the Debian packages
 * (tools) present, and a cached box or an apt source to build one from. /dev/kvm is not needed.
 */
export async function libvirtAvailable(): Promise<Availability> {
  if (process.platform !== "linux") return { ok: false, reason: "not Linux" };
  if (!isRoot()) return { ok: false, reason: "needs root (namespaces, mounts, libvirtd)" };
  const boxCached = existsSync(await testBoxPath());
  const missing = await missingPackages([
    ...new Set([...LIBVIRT_E2E_PACKAGES, ...(boxCached ? [] : TEST_BOX_BUILD_PACKAGES)]),
  ]);
  if (missing && missing.length > 0) {
    return {
      ok: false,
      reason: `missing Debian packages: ${missing.join(" ")} (apt-get install --no-install-recommends ${missing.join(" ")}; see test/helpers/libvirt-env.ts)`,
    };
  }
  const missingTools: string[] = [];
  for (const tool of REQUIRED_TOOLS) if (!(await findTool(tool))) missingTools.push(tool);
  if (missingTools.length > 0) return { ok: false, reason: `missing ${missingTools.join(", ")}` };
  if (!boxCached) {
    const missingBuildTools: string[] = [];
    for (const tool of BOX_BUILD_TOOLS) if (!(await findTool(tool))) missingBuildTools.push(tool);
    if (missingBuildTools.length > 0) {
      return { ok: false, reason: `no cached box and missing ${missingBuildTools.join(", ")}` };
    }
    if (!(await findAptMirror())) {
      return {
        ok: false,
        reason: "no cached box and no apt source for Debian bookworm (set K8SLAB_TEST_MIRROR)",
      };
    }
  }
  try {
    await run("ip", ["netns", "list"], { timeoutMs: 5_000 });
  } catch (error) {
    return { ok: false, reason: `ip netns is unavailable: ${String(error)}` };
  }
  return { ok: true };
}

// ---------------------------------------------------------------------------------------------
// the box

/** Where the box for the current scripts/build-test-box.sh is (or will be) cached. */
export async function testBoxPath(): Promise<string> {
  return (await run("bash", [BOX_SCRIPT, "--print-path"], { timeoutMs: 10_000 })).trim();
}

/**
 * Returns the path of the cached test box, building it first (scripts/build-test-box.sh, about
 * 3 min cold) when the script changed or the cache is empty. Parallel callers build it once.
 */
export async function ensureTestBox(
  opts: { onProgress?: (line: string) => void } = {},
): Promise<string> {
  const cached = await testBoxPath();
  if (existsSync(cached)) return cached;
  const mirror = await findAptMirror();
  const args = [
    BOX_SCRIPT,
    ...(mirror ? ["--mirror", mirror.uri] : []),
    ...(mirror?.keyring ? ["--keyring", mirror.keyring] : []),
  ];
  // The environment is extended (proxy settings pass through), not replaced.
  const subprocess = execa("bash", args, {
    reject: false,
    timeout: BOX_BUILD_TIMEOUT_MS,
    forceKillAfterDelay: 10_000,
    stdin: "ignore",
    env: { PATH: hostPath(), LC_ALL: "C" },
    all: true,
  });
  const onProgress = opts.onProgress;
  if (onProgress) {
    let pending = "";
    subprocess.stderr?.on("data", (chunk: Buffer) => {
      pending += chunk.toString();
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) if (line.startsWith("build-test-box:")) onProgress(line);
    });
  }
  const result = await subprocess;
  if (result.failed) {
    throw new Error(
      `building the test box failed (${result.timedOut ? "timed out" : `exit ${result.exitCode ?? result.signal ?? "?"}`}):\n${tail(String(result.all ?? ""))}`,
    );
  }
  const built =
    String(result.stdout ?? "")
      .trim()
      .split("\n")
      .pop() ?? "";
  if (!existsSync(built)) throw new Error(`build-test-box.sh printed ${built}, which is missing`);
  return built;
}

// ---------------------------------------------------------------------------------------------
// the environment

const QEMU_CONF_APPEND = `
# --- k8slab test environment (test/helpers/libvirt-env.ts) ---
user = "root"
group = "root"
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
`;

/**
 * Shell run once inside the new mount namespace (already in the network namespace): private
 * /run, a sysfs of this network namespace (cgroup mounts carried over), and the private libvirt
 * directories bound over the system ones.
 */
function setupScript(stateDir: string): string {
  const s = singleQuote(stateDir);
  return `set -eu
mount --make-rslave /
mkdir -p ${s}/cgroup-save
if mountpoint -q /sys/fs/cgroup; then mount --rbind /sys/fs/cgroup ${s}/cgroup-save; fi
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
if mountpoint -q ${s}/cgroup-save; then
  mount --rbind ${s}/cgroup-save /sys/fs/cgroup
  umount -R ${s}/cgroup-save || umount -R -l ${s}/cgroup-save
fi
rmdir ${s}/cgroup-save
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/lock /run/libvirt
for d in etc/libvirt var/lib/libvirt var/log/libvirt var/cache/libvirt; do
  src=${s}/$(echo "$d" | tr / -)
  mkdir -p "/$d" "$src"
  mount --bind "$src" "/$d"
done
`;
}

/**
 * Creates the namespaces, starts virtlogd and libvirtd in them and waits until libvirtd answers.
 * On failure everything made so far is removed before the error escapes.
 */
export async function startLibvirtEnv(
  opts: { onProgress?: (line: string) => void } = {},
): Promise<LibvirtEnv> {
  const progress = opts.onProgress ?? ((): void => undefined);
  const id = `k8slab-lv${process.pid}x${counter++}`;
  const netns = id;
  const stateDir = await fs.mkdtemp(path.join(os.tmpdir(), `${id}-`));
  const netnsFile = `/run/netns/${netns}`;
  const logsDir = path.join(stateDir, "logs");
  const vagrantHome = path.join(stateDir, "vagrant-home");
  const tmpDir = path.join(stateDir, "tmp");
  const daemons: { name: string; child: ChildProcess }[] = [];
  const nsInodes: number[] = [];
  let netnsCreated = false;
  /** Keeps the mount namespace alive; everything enters it through /proc/<pid>/ns/mnt. */
  let holder: ChildProcess | undefined;
  let stopped = false;
  const hostNetworksDir = "/etc/libvirt/qemu/networks";
  const hostNetworksBefore = await listDir(hostNetworksDir);
  const cgroupsBefore = new Set(await libvirtCgroups());

  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v;
  Object.assign(env, {
    PATH: hostPath(),
    VAGRANT_HOME: vagrantHome,
    VAGRANT_CHECKPOINT_DISABLE: "1",
    VAGRANT_DEFAULT_PROVIDER: "libvirt",
    VAGRANT_NO_COLOR: "1",
    LIBVIRT_DEFAULT_URI: "qemu:///system",
    TMPDIR: tmpDir,
    LC_ALL: "C.UTF-8",
  });

  const nsenterArgs = (cwd?: string): string[] => [
    `--mount=/proc/${holderPid()}/ns/mnt`,
    `--net=${netnsFile}`,
    ...(cwd ? [`--wd=${cwd}`] : ["--wd=/"]),
    "--",
  ];

  const exec = async (
    cmd: string,
    args: readonly string[],
    execOpts: LibvirtExecOptions = {},
  ): Promise<LibvirtExecResult> => {
    if (stopped) throw new Error(`${id} is stopped`);
    const started = Date.now();
    const subprocess = execa("nsenter", [...nsenterArgs(execOpts.cwd), cmd, ...args], {
      reject: false,
      all: true,
      timeout: execOpts.timeoutMs ?? 120_000,
      forceKillAfterDelay: 5_000,
      ...(execOpts.input === undefined ? { stdin: "ignore" as const } : { input: execOpts.input }),
      env: { ...env, ...execOpts.env },
      extendEnv: false,
    });
    const onLine = execOpts.onLine;
    if (onLine) {
      let pending = "";
      subprocess.all?.on("data", (chunk: Buffer) => {
        pending += chunk.toString();
        const lines = pending.split("\n");
        pending = lines.pop() ?? "";
        for (const line of lines) onLine(line);
      });
    }
    const result = await subprocess;
    return {
      exitCode: result.exitCode,
      stdout: String(result.stdout ?? ""),
      stderr: String(result.stderr ?? ""),
      all: String(result.all ?? ""),
      timedOut: result.timedOut,
      durationMs: Date.now() - started,
    };
  };

  const virsh = (...args: string[]): Promise<LibvirtExecResult> =>
    exec("virsh", ["-q", "-c", "qemu:///system", ...args], { timeoutMs: VIRSH_TIMEOUT_MS });
  const virshNames = async (...args: string[]): Promise<string[]> => {
    const r = await virsh(...args);
    if (r.exitCode !== 0) throw new Error(`virsh ${args.join(" ")}: ${tail(r.all, 5)}`);
    return r.stdout
      .split("\n")
      .map((l) => l.trim())
      .filter(Boolean);
  };

  const startDaemon = (name: string, args: string[]): ChildProcess => {
    const fd = openSync(path.join(logsDir, `${name}.log`), "a", 0o600);
    try {
      // nsenter execs the daemon (no pid namespace, so no fork): the child's pid is the daemon's.
      const child = spawn("nsenter", [...nsenterArgs(), name, ...args], {
        stdio: ["ignore", fd, fd],
        env: { PATH: hostPath(), LC_ALL: "C" },
      });
      child.on("error", () => undefined);
      // stop() (or the exit handler) ends it; it must not keep the test process alive by itself.
      child.unref();
      daemons.push({ name, child });
      return child;
    } finally {
      closeSync(fd);
    }
  };

  // Last resort when the test process exits without stop(): kill and unlink, synchronously.
  const teardownSync = (): void => {
    for (const { child } of daemons) if (child.pid !== undefined) signal(child.pid, "SIGKILL");
    for (const pid of pidsInNamespacesSync(nsInodes)) signal(pid, "SIGKILL");
    const quiet = { stdio: "ignore" as const, timeout: 10_000 };
    try {
      if (holder?.pid !== undefined) signal(holder.pid, "SIGKILL");
      if (netnsCreated) execFileSync("ip", ["netns", "del", netns], quiet);
      execFileSync("rm", ["-rf", "--one-file-system", stateDir], quiet);
    } catch {
      // best effort while the process exits
    }
  };
  process.once("exit", teardownSync);

  const diagnostics = async (lines = 40): Promise<string> => {
    const parts: string[] = [];
    const files = [
      ...(await listDir(logsDir)).map((f) => path.join(logsDir, f)),
      ...(await listDir(path.join(stateDir, "var-log-libvirt", "qemu"))).map((f) =>
        path.join(stateDir, "var-log-libvirt", "qemu", f),
      ),
    ];
    for (const file of files) {
      const text = await readText(file);
      if (text) parts.push(`--- ${file}\n${tail(text, lines)}`);
    }
    return parts.join("\n");
  };

  const leftovers = async (): Promise<string[]> => {
    const found: string[] = [];
    if ((await listDir("/run/netns")).includes(netns)) found.push(`network namespace ${netns}`);
    for (const pid of await pidsInNamespaces(nsInodes)) {
      const cmdline = ((await readText(`/proc/${pid}/cmdline`)) ?? "").replace(/\0/g, " ").trim();
      found.push(`process ${pid} in ${id}'s namespaces: ${cmdline}`);
    }
    for (const { name, child } of daemons) {
      if (child.pid !== undefined && alive(child.pid) && child.exitCode === null) {
        found.push(`${name} (pid ${child.pid}) still running`);
      }
    }
    // qemu of this environment, wherever it runs: its disks are in stateDir.
    for (const name of await listDir("/proc")) {
      if (!/^\d+$/.test(name)) continue;
      const cmdline = ((await readText(`/proc/${name}/cmdline`)) ?? "").replace(/\0/g, " ");
      if (cmdline.includes("qemu-system") && cmdline.includes(stateDir)) {
        found.push(`qemu process ${name}: ${cmdline.slice(0, 200)}`);
      }
    }
    for (const m of await mountsUnder(stateDir)) found.push(`mount ${m}`);
    for (const l of await loopDevicesUnder(stateDir)) found.push(`loop device ${l}`);
    const hostNetworks = await listDir(hostNetworksDir);
    for (const f of hostNetworks) {
      if (!hostNetworksBefore.includes(f))
        found.push(`libvirt network file ${hostNetworksDir}/${f}`);
    }
    for (const cg of await libvirtCgroups()) if (!cgroupsBefore.has(cg)) found.push(`cgroup ${cg}`);
    if (existsSync(stateDir)) found.push(`directory ${stateDir}`);
    return found;
  };

  const stop = async (): Promise<void> => {
    if (stopped) return;
    const errors: string[] = [];
    const note = (what: string, error: unknown): void => {
      errors.push(`${what}: ${error instanceof Error ? error.message : String(error)}`);
    };
    const libvirtdUp =
      holderAlive() && daemons.some((d) => d.name === "libvirtd" && d.child.exitCode === null);
    if (libvirtdUp) {
      // Through libvirt first, so it tears down bridges, dnsmasq and qemu in order.
      try {
        for (const dom of await virshNames("list", "--all", "--name")) {
          await virsh("destroy", dom);
          const r = await virsh(
            "undefine",
            dom,
            "--managed-save",
            "--snapshots-metadata",
            "--nvram",
          );
          if (r.exitCode !== 0) await virsh("undefine", dom);
        }
      } catch (error) {
        note("removing domains", error);
      }
      try {
        for (const net of await virshNames("net-list", "--all", "--name")) {
          await virsh("net-destroy", net);
          const r = await virsh("net-undefine", net);
          if (r.exitCode !== 0) note(`net-undefine ${net}`, tail(r.all, 3));
        }
      } catch (error) {
        note("removing networks", error);
      }
      try {
        for (const pool of await virshNames("pool-list", "--all", "--name")) {
          await virsh("pool-start", pool); // vol-list needs an active pool
          for (const line of await virshNames("vol-list", pool)) {
            const vol = line.split(/\s+/)[0];
            if (vol) await virsh("vol-delete", "--pool", pool, vol);
          }
          await virsh("pool-destroy", pool);
          const r = await virsh("pool-undefine", pool);
          if (r.exitCode !== 0) note(`pool-undefine ${pool}`, tail(r.all, 3));
        }
      } catch (error) {
        note("removing pools", error);
      }
    }
    // Daemons: libvirtd before virtlogd (qemu logs through virtlogd until it is gone).
    for (const name of ["libvirtd", "virtlogd"]) {
      for (const d of daemons.filter((x) => x.name === name)) {
        if (d.child.pid !== undefined) await killAll([d.child.pid]);
      }
    }
    // Whatever still runs in our namespaces was started by this environment.
    const rest = await pidsInNamespaces(nsInodes);
    if (rest.length > 0) await killAll(rest);
    stopped = true;
    process.removeListener("exit", teardownSync);
    // The host's networks directory is not the one libvirtd wrote to, but check it all the same:
    // definitions that appeared while we ran and are named like vagrant-libvirt's go.
    for (const f of await listDir(hostNetworksDir)) {
      if (!hostNetworksBefore.includes(f) && /^vagrant/.test(f)) {
        await fs.rm(path.join(hostNetworksDir, f), { force: true }).catch((e) => note(f, e));
      }
    }
    // cgroups libvirt made for machines while we ran (rmdir only removes empty ones).
    const newCgroups = (await libvirtCgroups()).filter((cg) => !cgroupsBefore.has(cg));
    for (const cg of newCgroups.sort((a, b) => b.length - a.length)) {
      await fs.rmdir(cg).catch((e) => note(`rmdir ${cg}`, e));
    }
    if (holder?.pid !== undefined) await killAll([holder.pid]);
    if (netnsCreated) {
      await run("ip", ["netns", "del", netns]).catch((e) => note(`ip netns del ${netns}`, e));
      netnsCreated = false;
    }
    const stillMounted = await mountsUnder(stateDir);
    if (stillMounted.length === 0) {
      await fs
        .rm(stateDir, { recursive: true, force: true, maxRetries: 3 })
        .catch((e) => note(`rm ${stateDir}`, e));
    } else {
      errors.push(`not removing ${stateDir}: still mounted: ${stillMounted.join(", ")}`);
    }
    const left = await leftovers();
    if (errors.length > 0 || left.length > 0) {
      throw new Error(
        `stopping ${id} left things behind:\n${[...errors, ...left.map((l) => `left: ${l}`)].join("\n")}`,
      );
    }
  };

  try {
    progress(`${id}: namespaces and private libvirt directories in ${stateDir}`);
    for (const dir of [logsDir, vagrantHome, tmpDir]) await fs.mkdir(dir, { recursive: true });
    await fs.chmod(stateDir, 0o755);

    // Private copies of libvirt's directories: /etc/libvirt keeps the packaged configuration
    // minus the "default" network; the others start empty.
    const etc = path.join(stateDir, "etc-libvirt");
    await fs.cp("/etc/libvirt", etc, { recursive: true, preserveTimestamps: true });
    await fs.rm(path.join(etc, "qemu", "networks"), { recursive: true, force: true });
    await fs.mkdir(path.join(etc, "qemu", "networks", "autostart"), { recursive: true });
    await fs.appendFile(path.join(etc, "qemu.conf"), QEMU_CONF_APPEND);
    for (const d of ["var-lib-libvirt", "var-log-libvirt", "var-cache-libvirt"]) {
      await fs.mkdir(path.join(stateDir, d), { recursive: true });
    }
    for (const d of ["images", "qemu", "dnsmasq", "network", "boot"]) {
      await fs.mkdir(path.join(stateDir, "var-lib-libvirt", d), { recursive: true });
    }

    await run("ip", ["netns", "add", netns]);
    netnsCreated = true;
    await run("ip", ["-n", netns, "link", "set", "lo", "up"]);
    const netIno = inode(netnsFile);
    if (netIno !== undefined) nsInodes.push(netIno);

    // The mount namespace is held by a process that sets it up and then sleeps: no bind mount
    // of it on the host, which concurrent namespaces would copy and keep alive.
    holder = spawn(
      "unshare",
      [
        "--mount",
        "--propagation",
        "slave",
        "--",
        "nsenter",
        `--net=${netnsFile}`,
        "--",
        "sh",
        "-c",
        `${setupScript(stateDir)}echo ready\nexec sleep infinity\n`,
      ],
      { stdio: ["ignore", "pipe", "pipe"], env: { PATH: hostPath(), LC_ALL: "C" } },
    );
    await waitForHolder(holder);
    const mntIno = inode(`/proc/${holderPid()}/ns/mnt`);
    if (mntIno !== undefined) nsInodes.push(mntIno);

    progress(`${id}: starting virtlogd and libvirtd`);
    startDaemon("virtlogd", []);
    await waitForSocket("/run/libvirt/virtlogd-sock", "virtlogd");
    startDaemon("libvirtd", []);
    await waitForVirsh();
    progress(`${id}: libvirtd answers`);
  } catch (error) {
    const log = await diagnostics(20).catch(() => "");
    await stop().catch(() => undefined);
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(`starting the libvirt test environment failed: ${message}\n${log}`);
  }

  function holderPid(): number {
    if (holder?.pid === undefined || holder.exitCode !== null || holder.signalCode !== null) {
      throw new Error(`${id}: the process holding the mount namespace is gone`);
    }
    return holder.pid;
  }

  function holderAlive(): boolean {
    return holder?.pid !== undefined && holder.exitCode === null && holder.signalCode === null;
  }

  async function waitForHolder(child: ChildProcess): Promise<void> {
    let out = "";
    let err = "";
    child.on("error", () => undefined);
    child.stderr?.on("data", (chunk: Buffer) => (err += chunk.toString()));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`namespace setup timed out after 30 s: ${tail(err, 10)}`));
      }, 30_000);
      child.stdout?.on("data", (chunk: Buffer) => {
        out += chunk.toString();
        if (out.includes("ready\n")) {
          clearTimeout(timer);
          // From here on it only sleeps; it must not keep the test process alive by itself.
          child.stdout?.destroy();
          child.stderr?.destroy();
          child.unref();
          resolve();
        }
      });
      child.once("exit", (code, sig) => {
        clearTimeout(timer);
        reject(new Error(`namespace setup exited with ${code ?? sig ?? "?"}: ${tail(err, 10)}`));
      });
    });
  }

  async function waitForSocket(socket: string, what: string): Promise<void> {
    const deadline = Date.now() + DAEMON_READY_TIMEOUT_MS;
    for (let i = 0; i < 600 && Date.now() < deadline; i++) {
      const r = await exec("test", ["-S", socket], { timeoutMs: 5_000 });
      if (r.exitCode === 0) return;
      const d = daemons.find((x) => x.name === what);
      if (d && d.child.exitCode !== null)
        throw new Error(`${what} exited with ${d.child.exitCode}`);
      await sleep(100);
    }
    throw new Error(
      `timed out after ${DAEMON_READY_TIMEOUT_MS} ms waiting for ${what}'s ${socket}`,
    );
  }

  async function waitForVirsh(): Promise<void> {
    const deadline = Date.now() + DAEMON_READY_TIMEOUT_MS;
    let last = "";
    for (let i = 0; i < 120 && Date.now() < deadline; i++) {
      const d = daemons.find((x) => x.name === "libvirtd");
      if (d && d.child.exitCode !== null)
        throw new Error(`libvirtd exited with ${d.child.exitCode}`);
      const r = await exec("virsh", ["-q", "-c", "qemu:///system", "version"], {
        timeoutMs: 20_000,
      });
      if (r.exitCode === 0) return;
      last = tail(r.all, 3);
      await sleep(250);
    }
    throw new Error(`timed out after ${DAEMON_READY_TIMEOUT_MS} ms waiting for libvirtd: ${last}`);
  }

  return { id, netns, stateDir, env, enterArgs: nsenterArgs, exec, diagnostics, stop, leftovers };
}
