import { createWriteStream, type WriteStream } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { Writable } from "node:stream";
import { CommandFailedError } from "../errors.js";
import { tail } from "../util/exec.js";

/**
 * The machines of a lab, whoever runs them: Vagrant's VMs (src/vagrant) or existing machines
 * reached over SSH (src/ssh). Converge and the lifecycle commands see only this; which one a lab
 * gets is decided in one place, `labMachines` in src/lifecycle/ops.ts.
 */
export interface MachineStatus {
  name: string;
  /**
   * Vagrant's state names (running, poweroff, not_created, ...), or for an SSH lab: `running`
   * when the node answers over SSH, `unreachable` when it does not.
   */
  state: string;
  /** virtualbox, libvirt or ssh. */
  provider: string;
}

export interface Machines {
  readonly kind: "vagrant" | "ssh";
  status(): Promise<MachineStatus[]>;
  /** Make the machines ready to provision: boot VMs, or for SSH check each node answers. */
  up(opts?: { provider?: string; machines?: string[] }): Promise<void>;
  /**
   * Run provisioners (phase names, and pki-upload) on a machine, in order. A failure is a
   * MachineCommandError whose `completed` lists the provisioners that finished before it.
   */
  provision(
    machine: string,
    provisioners: string[],
    env?: Record<string, string>,
    timeoutMs?: number,
  ): Promise<void>;
  /** Run a command as the login user (`sudo` inside it works); its standard output. */
  sshCommand(machine: string, command: string, timeoutMs?: number): Promise<string>;
  /** Run a command for a person, output streamed, no time limit; resolves with its exit status. */
  sshStream(
    machine: string,
    command: string,
    io?: { stdout: Writable; stderr: Writable },
  ): Promise<number>;
  /** An interactive shell attached to this terminal; resolves with its exit status. */
  sshInteractive(machine: string): Promise<number>;
  destroy(): Promise<void>;
}

/**
 * A command on a lab's machines failed: what it was, how it ended, the tail of its output and
 * the log with all of it, and whether it is worth another pass.
 */
export class MachineCommandError extends CommandFailedError {
  /** The tool's own error class (Vagrant::Errors::..., or ssh's connection failure). */
  readonly kind: string;
  /** Worth another try (SSH not up yet, a download cut off), as opposed to a broken setup. */
  readonly transient: boolean;
  /** A provisioner script exited non-zero (the machine is fine; the phase is not done yet). */
  readonly provisioningFailure: boolean;
  readonly logFile: string;
  /** For provision: the provisioners that finished before it failed, in order. */
  completed: readonly string[] = [];

  constructor(opts: {
    command: string;
    exitCode?: number | undefined;
    signal?: string | undefined;
    output: string;
    kind: string;
    logFile: string;
    timedOut?: boolean | undefined;
    transient: boolean;
    provisioningFailure: boolean;
  }) {
    super({
      command: opts.command,
      exitCode: opts.exitCode,
      signal: opts.signal,
      outputTail: tail(opts.output),
      hint: `the full output is in ${opts.logFile}`,
      timedOut: opts.timedOut,
    });
    this.name = "MachineCommandError";
    this.kind = opts.kind;
    this.transient = opts.transient;
    this.provisioningFailure = opts.provisioningFailure;
    this.logFile = opts.logFile;
  }
}

/**
 * The log of one run of a tool on the lab's machines, opened for writing:
 * <logDir>/<time>-<seq>-<tool>-<label>.log, so that the order of names is the order of runs.
 */
export async function openRunLog(
  logDir: string,
  seq: number,
  tool: string,
  label: string,
): Promise<{ file: string; log: WriteStream }> {
  await mkdir(logDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const file = join(logDir, `${stamp}-${String(seq).padStart(3, "0")}-${tool}-${label}.log`);
  return { file, log: createWriteStream(file, { mode: 0o644 }) };
}
