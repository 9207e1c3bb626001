import type { Writable } from "node:stream";
import { CommandFailedError, K8slabError } from "../errors.js";
import { MachineCommandError, openRunLog, type Machines } from "../machines/machines.js";
import { formatCommand, runAttached, runCommand, type Runner } from "../util/exec.js";
import {
  errorExit,
  machineStatuses,
  parseMachineReadable,
  uiText,
  type MachineStatus,
} from "./machine-readable.js";

/**
 * The only module that runs `vagrant`. Every run is logged in full under the lab's logs/ and a
 * failure becomes one VagrantError with the command, exit code and the tail of its output.
 */
export class VagrantError extends MachineCommandError {
  constructor(
    opts: Omit<
      ConstructorParameters<typeof MachineCommandError>[0],
      "transient" | "provisioningFailure"
    >,
  ) {
    super({
      ...opts,
      transient: isTransient(opts.kind, opts.output),
      provisioningFailure:
        !PERMANENT_KINDS.some((r) => r.test(opts.kind)) &&
        /non-zero exit status|k8slab: phase/i.test(opts.output),
    });
    this.name = "VagrantError";
  }
}

const TRANSIENT_KINDS = [
  /SSHConnection/,
  /SSHNotReady/,
  /SSHKeyExchange/,
  /BootTimeout/,
  /BoxDownloader/,
  /NetSSH/,
  /MachineActionLockedError/,
];
const PERMANENT_KINDS = [
  /ProviderNotUsable/,
  /BoxNotFound/,
  /VagrantfileLoadError/,
  /ConfigInvalid/,
  /NetworkHostOnly/,
];

function isTransient(kind: string, output: string): boolean {
  if (PERMANENT_KINDS.some((r) => r.test(kind))) return false;
  if (TRANSIENT_KINDS.some((r) => r.test(kind))) return true;
  return /connection (reset|refused|timed out)|timed out while waiting for the machine to boot/i.test(
    output,
  );
}

export interface VagrantOptions {
  /** The lab directory (where the Vagrantfile is). */
  cwd: string;
  logDir: string;
  env?: Record<string, string | undefined>;
  runner?: Runner;
  signal?: AbortSignal;
  /** Every line of human output, as it comes. */
  onLine?: (line: string) => void;
}

export class Vagrant implements Machines {
  readonly kind = "vagrant";
  private seq = 0;
  constructor(private readonly options: VagrantOptions) {}

  private async run(
    args: string[],
    opts: {
      timeoutMs?: number | undefined;
      label: string;
      env?: Record<string, string>;
      raw?: boolean;
      /** Sees every line of human text as it comes. */
      observe?: (text: string) => void;
    },
  ) {
    const { cwd, logDir } = this.options;
    this.seq += 1;
    const { file: logFile, log } = await openRunLog(logDir, this.seq, "vagrant", opts.label);
    const fullArgs = opts.raw ? args : [...args, "--machine-readable"];
    log.write(`$ ${formatCommand("vagrant", fullArgs)}\n`);
    const runner = this.options.runner ?? runCommand;
    const onLine = (line: string) => {
      log.write(`${line}\n`);
      const text = opts.raw ? line : uiText(parseMachineReadable(line));
      if (text) {
        opts.observe?.(text);
        this.options.onLine?.(text);
      }
    };
    try {
      const result = await runner("vagrant", fullArgs, {
        cwd,
        env: {
          ...this.options.env,
          ...opts.env,
          VAGRANT_CHECKPOINT_DISABLE: "1",
          VAGRANT_NO_COLOR: "1",
        },
        onLine,
        ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}),
        ...(this.options.signal ? { signal: this.options.signal } : {}),
        missingHint: "install Vagrant (https://www.vagrantup.com), then run: k8slab doctor",
      });
      return { lines: parseMachineReadable(result.stdout), stdout: result.stdout, logFile };
    } catch (error) {
      if (error instanceof CommandFailedError) {
        const lines = parseMachineReadable(error.outputTail);
        const exit = errorExit(lines);
        throw new VagrantError({
          command: formatCommand("vagrant", fullArgs),
          exitCode: error.exitCode,
          signal: error.signal,
          output: uiText(lines) || exit?.message || error.outputTail,
          kind: exit?.kind ?? "",
          logFile,
          timedOut: error.timedOut,
        });
      }
      throw error;
    } finally {
      await new Promise((resolve) => log.end(resolve));
    }
  }

  async status(): Promise<MachineStatus[]> {
    const { lines } = await this.run(["status"], { label: "status", timeoutMs: 120_000 });
    return machineStatuses(lines);
  }

  /** Boot the machines without provisioning; provisioning is driven phase by phase. */
  async up(opts: { provider?: string; machines?: string[] } = {}): Promise<void> {
    const args = [
      "up",
      "--no-provision",
      ...(opts.provider ? ["--provider", opts.provider] : []),
      ...(opts.machines ?? []),
    ];
    await this.run(args, { label: "up" });
  }

  /**
   * Run some provisioners on a machine, in the order the Vagrantfile defines them. A failure is a
   * VagrantError whose `completed` lists the provisioners that finished before the failing one.
   */
  async provision(
    machine: string,
    provisioners: string[],
    env: Record<string, string> = {},
    timeoutMs?: number,
  ): Promise<void> {
    if (provisioners.length === 0) return;
    const started: string[] = [];
    try {
      await this.run(["provision", machine, "--provision-with", provisioners.join(",")], {
        label: `provision-${machine}`,
        env,
        timeoutMs,
        observe: (text) => {
          const name = /Running provisioner: ([A-Za-z0-9_-]+)/.exec(text)?.[1];
          if (name && provisioners.includes(name)) started.push(name);
        },
      });
    } catch (error) {
      if (error instanceof VagrantError) error.completed = started.slice(0, -1);
      throw error;
    }
  }

  /** Run a command on a machine; its standard output (`vagrant ssh -c` has no machine-readable form). */
  async sshCommand(machine: string, command: string, timeoutMs = 120_000): Promise<string> {
    const { stdout } = await this.run(["ssh", machine, "-c", command, "--", "-q"], {
      label: `ssh-${machine}`,
      timeoutMs,
      raw: true,
    });
    return stdout;
  }

  /**
   * Run a command on a machine for a person (`k8slab ssh -c`): its output streams as it comes, to
   * `io` (or straight to this process's stdout and stderr), with no time limit, and this
   * process's standard input. Resolves with vagrant's exit status: the remote command's, or
   * Vagrant's own failure. Internal checks that need the output use `sshCommand`.
   */
  async sshStream(
    machine: string,
    command: string,
    io: { stdout: Writable; stderr: Writable } = { stdout: process.stdout, stderr: process.stderr },
  ): Promise<number> {
    return this.attached(["ssh", machine, "-c", command], io);
  }

  /** An interactive shell on a machine, attached to this terminal; resolves with its exit status. */
  async sshInteractive(machine: string): Promise<number> {
    return this.attached(["ssh", machine], { stdout: process.stdout, stderr: process.stderr });
  }

  private attached(args: string[], io: { stdout: Writable; stderr: Writable }) {
    return runAttached("vagrant", args, {
      cwd: this.options.cwd,
      env: { ...this.options.env, VAGRANT_CHECKPOINT_DISABLE: "1" },
      io,
      signal: this.options.signal,
      missingHint: "install Vagrant (https://www.vagrantup.com), then run: k8slab doctor",
      failedHint: "is Vagrant installed? k8slab doctor",
    });
  }

  async port(machine: string, guest: number): Promise<number> {
    const { lines } = await this.run(["port", machine, "--guest", String(guest)], {
      label: "port",
      timeoutMs: 60_000,
    });
    const value = lines
      .map((l) => l.data.join(","))
      .join("\n")
      .match(/(\d+)\s*$/)?.[1];
    if (!value)
      throw new K8slabError(
        `vagrant did not report a host port for guest port ${guest} on ${machine}`,
      );
    return Number(value);
  }

  /** Add a box from a catalog metadata file (which names its version and a local .box file). */
  async boxAdd(metadataFile: string): Promise<void> {
    await this.run(["box", "add", metadataFile], { label: "box-add" });
  }

  async destroy(): Promise<void> {
    await this.run(["destroy", "--force"], { label: "destroy" });
  }
}
