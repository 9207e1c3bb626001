import { createHash } from "node:crypto";
import { basename, join } from "node:path";
import { cacheDir } from "../artifacts/cache.js";
import { CommandFailedError, K8slabError } from "../errors.js";
import { formatCommand, type RunOptions, type Runner } from "../util/exec.js";
import { shellQuote, singleQuote } from "../util/quote.js";
import type { BuilderVm } from "./builder-vm.js";
import { IMAGE_BUILDER_REPO } from "./releases.js";

/**
 * The one module that runs vagrant, make, docker and git for the Hypriot image builder. Every
 * command is first described as a Step, so `--dry-run` prints exactly what a real run executes.
 */

/** The builder VM's Docker port inside the guest; Vagrant may forward it to another host port. */
export const GUEST_DOCKER_PORT = 2375;

/** Docker settings from the user's shell that would point the CLI somewhere else or add TLS. */
export const DOCKER_ENV_CLEARED = ["DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"];

export const STEP_TIMEOUTS_MS = {
  version: 60_000,
  clone: 10 * 60_000,
  up: 45 * 60_000,
  port: 2 * 60_000,
  ssh: 2 * 60_000,
  dockerInfo: 60_000,
  make: 3 * 60 * 60_000,
} as const;

export interface Step {
  title: string;
  file: string;
  args: string[];
  cwd: string;
  /** Variables set for this command (on top of the caller's environment). */
  env: Record<string, string>;
  /** Variables removed from the caller's environment for this command. */
  unsetEnv: string[];
  timeoutMs: number;
}

export interface BuilderRunContext {
  runner: Runner;
  /** The caller's environment (PATH, HOME, ...), which every command starts from. */
  env: NodeJS.ProcessEnv;
  signal?: AbortSignal;
}

/** Where the builder checkout lives when --builder-dir is not given. */
export function defaultBuilderDir(env: NodeJS.ProcessEnv): string {
  return join(cacheDir(env), "image-builder-rpi");
}

/**
 * k8slab's own directory for one checkout, outside it (the checkout is the Docker build context):
 * build logs, the Vagrantfile override for libvirt, the checkout's versions.config while a build
 * has replaced it, and a copy of the last versions.config k8slab wrote.
 */
export function builderStateDir(env: NodeJS.ProcessEnv, builderDir: string): string {
  const id = createHash("sha256").update(builderDir).digest("hex").slice(0, 10);
  return join(cacheDir(env), "hypriot", `${basename(builderDir)}-${id}`);
}

function step(
  title: string,
  file: string,
  args: string[],
  cwd: string,
  timeoutMs: number,
  env: Record<string, string> = {},
  unsetEnv: string[] = [],
): Step {
  return { title, file, args, cwd, env, unsetEnv, timeoutMs };
}

export const steps = {
  clone: (parent: string, dir: string, ref: string): Step =>
    step(
      `clone image-builder-rpi ${ref}`,
      "git",
      [
        "-c",
        "advice.detachedHead=false",
        "clone",
        "--depth",
        "1",
        "--branch",
        ref,
        IMAGE_BUILDER_REPO,
        dir,
      ],
      parent,
      STEP_TIMEOUTS_MS.clone,
      { GIT_TERMINAL_PROMPT: "0" },
    ),
  up: (dir: string, vm: BuilderVm): Step =>
    step("start the builder VM", "vagrant", ["up"], dir, STEP_TIMEOUTS_MS.up, vm.env),
  /** Where the VM's Docker answers: a forwarded port (VirtualBox) or the VM's address (libvirt). */
  endpoint: (dir: string, vm: BuilderVm): Step =>
    vm.provider === "virtualbox"
      ? step(
          "ask Vagrant where the VM's Docker port is forwarded",
          "vagrant",
          ["port", "--guest", String(GUEST_DOCKER_PORT), "--machine-readable"],
          dir,
          STEP_TIMEOUTS_MS.port,
          vm.env,
        )
      : // vagrant-libvirt cannot list forwarded ports (`vagrant port` fails); the host reaches
        // the VM directly on the management network.
        step(
          "ask Vagrant for the VM's address",
          "vagrant",
          ["ssh-config"],
          dir,
          STEP_TIMEOUTS_MS.port,
          vm.env,
        ),
  checkUrl: (dir: string, vm: BuilderVm, url: string): Step =>
    step(
      "check that the VM can download the kernel",
      "vagrant",
      ["ssh", "-c", `curl -fsSI --max-time 30 -o /dev/null ${singleQuote(url)}`],
      dir,
      STEP_TIMEOUTS_MS.ssh,
      vm.env,
    ),
  dockerInfo: (dir: string, dockerHost: string): Step =>
    step(
      "check that DOCKER_HOST is the builder VM",
      "docker",
      ["info", "--format", "{{.OperatingSystem}}"],
      dir,
      STEP_TIMEOUTS_MS.dockerInfo,
      { DOCKER_HOST: dockerHost },
      DOCKER_ENV_CLEARED,
    ),
  make: (dir: string, dockerHost: string, version: string): Step =>
    // Never `make test` or `make shellcheck`: they run docker with -ti and fail without a terminal.
    step(
      "build the SD card image",
      "make",
      ["sd-image"],
      dir,
      STEP_TIMEOUTS_MS.make,
      { DOCKER_HOST: dockerHost, VERSION: version },
      DOCKER_ENV_CLEARED,
    ),
  version: (tool: string, cwd: string): Step =>
    step(`${tool} --version`, tool, ["--version"], cwd, STEP_TIMEOUTS_MS.version),
  plugins: (cwd: string): Step =>
    step("vagrant plugin list", "vagrant", ["plugin", "list"], cwd, STEP_TIMEOUTS_MS.version),
};

/** A vagrant command for the builder VM as a user would type it (with the libvirt override). */
export function vagrantCommand(
  dir: string,
  env: Record<string, string>,
  ...args: string[]
): string {
  return `cd ${dir} && ${describeStep(step("", "vagrant", args, dir, 0, env))}`;
}

/** The step as a user would type it: `cd DIR && env -u X A=b cmd args`. */
export function describeStep(s: Step): string {
  const unset = s.unsetEnv.map((name) => `-u ${name}`);
  const set = Object.entries(s.env).map(([k, v]) => `${k}=${shellQuote(v)}`);
  const env = unset.length > 0 ? ["env", ...unset, ...set] : set;
  return [...env, formatCommand(s.file, s.args)].join(" ");
}

/** Run one step; every line it prints goes to onLine. */
export async function runStep(
  ctx: BuilderRunContext,
  s: Step,
  onLine?: (line: string) => void,
): Promise<string> {
  const env: Record<string, string | undefined> = { ...ctx.env, ...s.env };
  for (const name of s.unsetEnv) env[name] = undefined;
  const options: RunOptions = {
    cwd: s.cwd,
    env,
    timeoutMs: s.timeoutMs,
    ...(onLine ? { onLine } : {}),
    ...(ctx.signal ? { signal: ctx.signal } : {}),
    missingHint: missingHint(s.file),
  };
  const result = await ctx.runner(s.file, s.args, options);
  return result.stdout;
}

function missingHint(tool: string): string {
  switch (tool) {
    case "vagrant":
      return "install Vagrant (https://www.vagrantup.com/downloads or your package manager)";
    case "VBoxManage":
      return "install VirtualBox, or the vagrant-libvirt plugin";
    case "docker":
      return "install the Docker CLI (the engine runs inside the builder VM; only the client is needed)";
    case "git":
      return "install git, or give --builder-dir a checkout of hypriot/image-builder-rpi";
    case "make":
      return "install make (build-essential on Debian/Ubuntu, Xcode command line tools on macOS)";
    default:
      return `install ${tool}, then try again`;
  }
}

/** A tool's --version line, or undefined when it is not on PATH. Other failures are thrown. */
export async function toolVersion(
  ctx: BuilderRunContext,
  tool: string,
  cwd: string,
): Promise<string | undefined> {
  try {
    const out = await runStep(ctx, steps.version(tool, cwd));
    return out.split("\n")[0]?.trim() ?? "";
  } catch (error) {
    if (error instanceof K8slabError && !(error instanceof CommandFailedError)) return undefined;
    throw error;
  }
}

export async function vagrantPlugins(ctx: BuilderRunContext, cwd: string): Promise<string[]> {
  const out = await runStep(ctx, steps.plugins(cwd));
  return out
    .split("\n")
    .map((l) => /^([A-Za-z0-9_.-]+)\s*\(/.exec(l.trim())?.[1])
    .filter((n): n is string => n !== undefined);
}

/**
 * The host port from `vagrant port --guest 2375 --machine-readable`. Machine-readable lines look
 * like `1700000000,default,ui,info,2376` or `...,forwarded_port,2375,2376`; a bare number is
 * accepted too (output without --machine-readable).
 */
export function parseVagrantPort(stdout: string, guest = GUEST_DOCKER_PORT): number | undefined {
  for (const raw of stdout.split("\n")) {
    const line = raw.trim();
    if (/^\d{1,5}$/.test(line)) return validPort(Number(line));
    const fields = line.split(",");
    if (fields.length < 4) continue;
    const [, , type, ...data] = fields;
    if (type === "forwarded_port" && data[0] === String(guest) && data[1] !== undefined) {
      return validPort(Number(data[1]));
    }
    if (type === "ui" && data.length >= 2) {
      const text = data
        .slice(1)
        .join(",")
        .replace(/%!\(VAGRANT_COMMA\)/g, ",")
        .trim();
      if (/^\d{1,5}$/.test(text)) return validPort(Number(text));
    }
  }
  return undefined;
}

function validPort(n: number): number | undefined {
  return Number.isInteger(n) && n > 0 && n < 65536 ? n : undefined;
}

/** `HostName 192.168.121.34` from `vagrant ssh-config`. */
export function parseSshConfigHost(stdout: string): string | undefined {
  const host = /^\s*HostName\s+(\S+)\s*$/m.exec(stdout)?.[1];
  return host && /^[A-Za-z0-9.:-]{1,253}$/.test(host) ? host : undefined;
}

/** The DOCKER_HOST of the builder VM's Docker engine. */
export async function dockerEndpoint(
  ctx: BuilderRunContext,
  dir: string,
  vm: BuilderVm,
  log?: (line: string) => void,
): Promise<string> {
  const s = steps.endpoint(dir, vm);
  const out = await runStep(ctx, s, log);
  const shown = out.trim() || "(no output)";
  const again = vagrantCommand(dir, vm.env, ...s.args);
  if (vm.provider === "libvirt") {
    const host = parseSshConfigHost(out);
    if (host === undefined) {
      throw new K8slabError(`vagrant ssh-config named no HostName for the builder VM:\n${shown}`, {
        hint: `is the VM running? ${again}`,
      });
    }
    return `tcp://${host}:${GUEST_DOCKER_PORT}`;
  }
  const port = parseVagrantPort(out);
  if (port === undefined) {
    throw new K8slabError(
      `vagrant port did not say where guest port ${GUEST_DOCKER_PORT} is forwarded:\n${shown}`,
      {
        hint: `check the builder's Vagrantfile forwards guest port ${GUEST_DOCKER_PORT}, then: ${again}`,
      },
    );
  }
  return `tcp://127.0.0.1:${port}`;
}

/** The operating system the Docker engine at dockerHost runs on (`docker info`). */
export async function dockerOs(
  ctx: BuilderRunContext,
  dir: string,
  vm: BuilderVm,
  dockerHost: string,
  log?: (line: string) => void,
): Promise<string> {
  try {
    return (await runStep(ctx, steps.dockerInfo(dir, dockerHost), log)).trim();
  } catch (error) {
    if (error instanceof CommandFailedError) {
      throw new K8slabError(
        `the Docker engine in the builder VM does not answer at ${dockerHost}`,
        {
          hint: `look at the VM: ${vagrantCommand(dir, vm.env, "provision")} (it installs and starts docker on port ${GUEST_DOCKER_PORT})`,
          cause: error,
        },
      );
    }
    throw error;
  }
}
