import type { WriteStream } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { homedir, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Writable } from "node:stream";
import { CommandFailedError, K8slabError } from "../errors.js";
import type { Lab, LabNode } from "../lab/schema.js";
import {
  MachineCommandError,
  openRunLog,
  type MachineStatus,
  type Machines,
} from "../machines/machines.js";
import { VM_PATHS } from "../plan/plan.js";
import { formatCommand, runAttached, runCommand, type Runner } from "../util/exec.js";
import { shellQuote } from "../util/quote.js";

/**
 * The only module that runs `ssh`: the machines of a lab whose provider is ssh, nodes that
 * already run and are reached with OpenSSH's client. Every run has a deadline (ConnectTimeout,
 * ServerAliveInterval x ServerAliveCountMax, and a time limit on the process), logs in with keys
 * only (BatchMode), and trusts host keys from the lab's own known_hosts (a new host's key is
 * recorded there on first contact, a changed one refuses); the user's ~/.ssh/known_hosts is
 * never written. Every run is logged in full under the lab's logs/, and a failure becomes one
 * SshError with the command, exit code and the tail of its output.
 */
export class SshError extends MachineCommandError {
  constructor(opts: ConstructorParameters<typeof MachineCommandError>[0]) {
    super(opts);
    this.name = "SshError";
  }
}

const MISSING_SSH = "install OpenSSH's client (Debian/Ubuntu: apt-get install openssh-client)";

/** What ssh itself says when it cannot connect or log in (it exits 255 then). */
export const SSH_FAILED = 255;
/** Seconds between keep-alives, and how many may go unanswered before ssh gives up. */
const ALIVE_INTERVAL = 5;
const ALIVE_COUNT = 3;
/** How long `status` waits for a node beyond its connect timeout. */
const STATUS_GRACE_MS = 10_000;
/** A phase without a deadline of its own (`k8slab provision`) gets this long. */
const DEFAULT_PHASE_MS = 30 * 60_000;
/** Where a node's scripts are uploaded (Vagrant's shell provisioner uses /tmp/vagrant-shell). */
export const REMOTE_PROVISION = VM_PATHS.provisionUpload;

/** How to log in to one node. */
export interface SshLogin {
  node: string;
  host: string;
  user: string;
  port: number;
  identityFile?: string | undefined;
  connectTimeoutSeconds: number;
}

export interface SshMachinesOptions {
  /** The lab directory (provision/, pki/nodes/). */
  dir: string;
  lab: Lab;
  logDir: string;
  /** Default: <dir>/known_hosts. */
  knownHostsFile?: string;
  env?: Record<string, string | undefined>;
  runner?: Runner;
  signal?: AbortSignal;
  /** Every line of output, as it comes. */
  onLine?: (line: string) => void;
}

/** The login for a node: its own `ssh:` over the lab's, the host defaulting to its address. */
export function sshLogin(
  lab: Lab,
  node: LabNode,
  env: Record<string, string | undefined> = {},
): SshLogin {
  if (!lab.ssh) {
    throw new K8slabError(`lab ${lab.name} has no ssh settings`, {
      hint: "add ssh: { user: <login user> } to the lab file",
    });
  }
  const home = env.HOME ?? homedir();
  const identity = node.ssh?.identityFile ?? lab.ssh.identityFile;
  return {
    node: node.name,
    host: node.ssh?.host ?? node.ip,
    user: node.ssh?.user ?? lab.ssh.user,
    port: node.ssh?.port ?? lab.ssh.port,
    identityFile:
      identity === undefined
        ? undefined
        : identity.startsWith("~/")
          ? join(home, identity.slice(1))
          : identity,
    connectTimeoutSeconds: lab.ssh.connectTimeoutSeconds,
  };
}

/** A command as root: through `sudo -n` (never a password prompt) unless the login is root. */
export function asRoot(login: SshLogin, command: string): string {
  return login.user === "root" ? command : `sudo -n ${command}`;
}

/** The remote command wrapped in `sh -c`, so it runs the same whatever the login shell is. */
export function sh(script: string): string {
  return `sh -c ${shellQuote(script)}`;
}

export class SshMachines implements Machines {
  readonly kind = "ssh";
  private seq = 0;
  private readonly knownHosts: string;
  constructor(private readonly options: SshMachinesOptions) {
    this.knownHosts = resolve(options.knownHostsFile ?? join(options.dir, "known_hosts"));
  }

  login(machine: string): SshLogin {
    const node = this.options.lab.nodes.find((n) => n.name === machine);
    if (!node) {
      throw new K8slabError(`no node ${JSON.stringify(machine)} in lab ${this.options.lab.name}`, {
        exitCode: 2,
        hint: `nodes: ${this.options.lab.nodes.map((n) => n.name).join(", ")}`,
      });
    }
    return sshLogin(this.options.lab, node, this.options.env);
  }

  /** ssh's arguments up to and including the destination. */
  private args(login: SshLogin, opts: { tty?: boolean } = {}): string[] {
    const o = (option: string) => ["-o", option];
    return [
      ...o("BatchMode=yes"),
      ...o("StrictHostKeyChecking=accept-new"),
      ...o(`UserKnownHostsFile=${this.knownHosts}`),
      // Only accept-new writes known_hosts (nodes connect in parallel: no rewrites of it).
      ...o("UpdateHostKeys=no"),
      ...o(`ConnectTimeout=${login.connectTimeoutSeconds}`),
      ...o(`ServerAliveInterval=${ALIVE_INTERVAL}`),
      ...o(`ServerAliveCountMax=${ALIVE_COUNT}`),
      ...o("LogLevel=ERROR"),
      ...(login.identityFile ? ["-i", login.identityFile, ...o("IdentitiesOnly=yes")] : []),
      "-p",
      String(login.port),
      "-l",
      login.user,
      opts.tty ? "-t" : "-T",
      login.host,
    ];
  }

  private openLog(label: string): Promise<{ file: string; log: WriteStream }> {
    this.seq += 1;
    return openRunLog(this.options.logDir, this.seq, "ssh", label);
  }

  /**
   * Run one remote command on a node; its output. A failure is an SshError: `transient` when ssh
   * could not connect (exit 255), a provisioning failure when the command itself failed, neither
   * when sudo refused (a setup problem another pass does not fix).
   */
  async run(
    machine: string,
    command: string,
    opts: {
      label: string;
      timeoutMs: number;
      inputFile?: string;
      /** Lines to show as they come (prefixed with the node's name). */
      stream?: boolean;
      log?: { file: string; log: WriteStream };
    },
  ): Promise<string> {
    const login = this.login(machine);
    const args = [...this.args(login), command];
    const own = opts.log ? undefined : await this.openLog(opts.label);
    const { file, log } = opts.log ?? own!;
    log.write(`$ ${formatCommand("ssh", args)}\n`);
    const runner = this.options.runner ?? runCommand;
    try {
      const result = await runner("ssh", args, {
        env: { ...this.options.env },
        timeoutMs: opts.timeoutMs,
        ...(opts.inputFile ? { inputFile: opts.inputFile } : {}),
        ...(this.options.signal ? { signal: this.options.signal } : {}),
        onLine: (line) => {
          log.write(`${line}\n`);
          if (opts.stream) this.options.onLine?.(`    ${machine}: ${line}`);
        },
        missingHint: MISSING_SSH,
      });
      return result.stdout;
    } catch (error) {
      if (!(error instanceof CommandFailedError)) throw error;
      const output = error.outputTail;
      const sudo =
        /sudo: (a terminal is required|a password is required|.*not in the sudoers|.*not allowed to)/.test(
          output,
        );
      const connection = !error.timedOut && error.exitCode === SSH_FAILED && !sudo;
      const kind = error.timedOut
        ? "timeout"
        : sudo
          ? "sudo"
          : connection
            ? "ssh-connection"
            : "command";
      throw new SshError({
        command: formatCommand("ssh", args),
        exitCode: error.exitCode,
        signal: error.signal,
        output: output || `ssh to ${login.user}@${login.host}:${login.port} failed`,
        kind,
        logFile: file,
        timedOut: error.timedOut,
        transient: connection,
        provisioningFailure: kind === "command",
      });
    } finally {
      if (own) await new Promise((done) => own.log.end(done));
    }
  }

  /**
   * Every node: `running` when it answers over SSH (within ssh.connectTimeoutSeconds, the
   * user's word for how slow a connection may be), else `unreachable`.
   */
  async status(): Promise<MachineStatus[]> {
    return Promise.all(
      this.options.lab.nodes.map(async (node) => {
        const state = await this.run(node.name, "true", {
          label: `status-${node.name}`,
          timeoutMs: this.login(node.name).connectTimeoutSeconds * 1000 + STATUS_GRACE_MS,
        }).then(
          () => "running",
          () => "unreachable",
        );
        return { name: node.name, state, provider: "ssh" };
      }),
    );
  }

  /**
   * Nothing boots: each node must answer over SSH and let the login user run commands as root.
   * One error names every node that does not.
   */
  async up(opts: { machines?: string[] } = {}): Promise<void> {
    const names = opts.machines ?? this.options.lab.nodes.map((n) => n.name);
    const failures = (
      await Promise.all(
        names.map(async (name) => {
          const login = this.login(name);
          try {
            await this.run(name, asRoot(login, "true"), {
              label: `up-${name}`,
              timeoutMs: (login.connectTimeoutSeconds + 30) * 1000,
            });
            return undefined;
          } catch (error) {
            if (!(error instanceof SshError)) throw error;
            const why = error.outputTail.split("\n").at(-1) || error.message.split("\n")[0]!;
            return `${name} (${login.user}@${login.host}:${login.port}): ${error.kind === "sudo" ? "sudo -n refuses: " : ""}${why}`;
          }
        }),
      )
    ).filter((f): f is string => f !== undefined);
    if (failures.length > 0) {
      throw new K8slabError(`cannot use the nodes over SSH:\n  ${failures.join("\n  ")}`, {
        hint: `k8slab doctor ${this.options.lab.name} checks each node's SSH login, sudo and kernel`,
      });
    }
  }

  /** Pack files of the lab directory and unpack them into a fresh directory on the node. */
  private async upload(
    machine: string,
    from: string,
    to: string,
    log: { file: string; log: WriteStream },
    deadline: number,
  ): Promise<void> {
    const login = this.login(machine);
    const runner = this.options.runner ?? runCommand;
    // Private: the bundle holds the node's keys. Removed whatever happens.
    const tmp = await mkdtemp(join(tmpdir(), "k8slab-upload-"));
    const tar = join(tmp, "upload.tar");
    try {
      await runner("tar", ["-C", join(this.options.dir, from), "-cf", tar, "."], {
        timeoutMs: 60_000,
      });
      const dir = shellQuote(to);
      const unpack = `rm -rf ${dir} && mkdir -p -m 0700 ${dir} && tar --no-same-owner -x -C ${dir} -f -`;
      await this.run(machine, asRoot(login, sh(unpack)), {
        label: `upload-${machine}`,
        timeoutMs: Math.max(1_000, deadline - Date.now()),
        inputFile: tar,
        log,
      });
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }

  /**
   * Upload the node's scripts, then run each provisioner in order as root: pki-upload copies the
   * node's own bundle (pki/nodes/<node>, never the CA key) to where the pki phase takes it from,
   * every other one runs provision/<node>/<name>.sh with `env` set. All of it within timeoutMs.
   */
  async provision(
    machine: string,
    provisioners: string[],
    env: Record<string, string> = {},
    timeoutMs = DEFAULT_PHASE_MS,
  ): Promise<void> {
    if (provisioners.length === 0) return;
    const login = this.login(machine);
    const deadline = Date.now() + timeoutMs;
    const remaining = () => Math.max(1_000, deadline - Date.now());
    const log = await this.openLog(`provision-${machine}`);
    const done: string[] = [];
    try {
      await this.upload(machine, join("provision", machine), REMOTE_PROVISION, log, deadline);
      const assignments = Object.entries(env).map(([k, v]) => `${k}=${shellQuote(v)}`);
      for (const name of provisioners) {
        this.options.onLine?.(`==> ${machine}: Running provisioner: ${name}...`);
        log.log.write(`==> ${machine}: Running provisioner: ${name}...\n`);
        if (name === "pki-upload") {
          await this.upload(
            machine,
            join("pki", "nodes", machine),
            VM_PATHS.pkiUpload,
            log,
            deadline,
          );
        } else {
          const script = `${REMOTE_PROVISION}/${name}.sh`;
          const command = ["env", ...assignments, "bash", script].join(" ");
          await this.run(machine, asRoot(login, command), {
            label: `provision-${machine}`,
            timeoutMs: remaining(),
            stream: true,
            log,
          });
        }
        done.push(name);
      }
    } catch (error) {
      if (error instanceof SshError) error.completed = [...done];
      throw error;
    } finally {
      await new Promise((resolveEnd) => log.log.end(resolveEnd));
    }
  }

  /**
   * Run a command as the login user; its standard output. `sudo` in it works for a root login
   * too, where the node may have no sudo at all.
   */
  async sshCommand(machine: string, command: string, timeoutMs = 120_000): Promise<string> {
    return this.run(
      machine,
      sh(`command -v sudo >/dev/null 2>&1 || sudo() { "$@"; }; ${command}`),
      {
        label: `ssh-${machine}`,
        timeoutMs,
      },
    );
  }

  async sshStream(
    machine: string,
    command: string,
    io: { stdout: Writable; stderr: Writable } = { stdout: process.stdout, stderr: process.stderr },
  ): Promise<number> {
    return this.attached([...this.args(this.login(machine)), command], io);
  }

  async sshInteractive(machine: string): Promise<number> {
    return this.attached([...this.args(this.login(machine), { tty: true })], {
      stdout: process.stdout,
      stderr: process.stderr,
    });
  }

  private attached(args: string[], io: { stdout: Writable; stderr: Writable }) {
    return runAttached("ssh", args, {
      env: this.options.env,
      io,
      signal: this.options.signal,
      missingHint: MISSING_SSH,
      failedHint: "k8slab doctor checks the nodes' SSH logins",
    });
  }

  /** The machines are not k8slab's: it never destroys them. */
  async destroy(): Promise<void> {
    throw sshDestroyRefusal(this.options.lab.name);
  }
}

export function sshDestroyRefusal(lab: string): K8slabError {
  return new K8slabError(
    `the nodes of lab ${lab} are machines k8slab did not create: it does not destroy them`,
    {
      hint: `k8slab reset ${lab} undoes what the phases installed on them; destroy --purge deletes only the lab directory (PKI, state, logs)`,
    },
  );
}
