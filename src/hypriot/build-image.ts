import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, type WriteStream } from "node:fs";
import { copyFile, mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { K8slabError } from "../errors.js";
import type { RuleProblem } from "../lab/problems.js";
import { runCommand, type Runner } from "../util/exec.js";
import {
  builderStateDir,
  defaultBuilderDir,
  describeStep,
  dockerEndpoint,
  dockerOs,
  runStep,
  steps,
  vagrantCommand,
  type BuilderRunContext,
  type Step,
} from "./builder.js";
import { IMAGE_BUILDER_REF } from "./releases.js";
import { describeCheckout, inspectCheckout, type BuilderCheckout } from "./builder-checkout.js";
import { isFile } from "./pi-lab.js";
import {
  builderVm,
  DEFAULT_KERNEL_PORT,
  LIBVIRT_HOST_ADDRESS,
  VIRTUALBOX_NAT_HOST,
  type BuilderProvider,
  type BuilderVm,
} from "./builder-vm.js";
import {
  checkAdvertiseHost,
  startKernelServer,
  servedName,
  type KernelServer,
} from "./kernel-server.js";
import {
  chooseProvider,
  preflight,
  PreflightError,
  staticChecks,
  type ProviderOptions,
} from "./preflight.js";
import {
  checkVersions,
  defaultImageVersion,
  failOnErrors,
  loadVersionsFile,
  renderVersionsConfig,
  stripUndefined,
  versionsProblems,
  WRITTEN_BY_K8SLAB,
  type VersionsConfig,
  type VersionValues,
} from "./versions-config.js";

export interface BuildHypriotImageOptions {
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** An image-builder-rpi checkout; default: a clone in the user's cache dir. */
  builderDir?: string;
  /** A YAML file (or built-in name) of versions.config values over the checkout's own. */
  config?: string;
  /** Image version (VERSION); default: a new timestamp. */
  imageVersion?: string;
  /** Git ref to clone when the cache has no checkout. */
  ref?: string;
  /** The builder VM's provider; default auto (VirtualBox when installed, else libvirt on Linux). */
  provider?: BuilderProvider | "auto";
  /** Serve this kernel .deb to the VM and use it as KERNEL_URL. */
  kernelDeb?: string;
  kernelHost?: string;
  kernelBind?: string;
  kernelPort?: number;
  /** Where the build output goes; default: k8slab's directory for the checkout. */
  logFile?: string;
  dryRun?: boolean;
  runner?: Runner;
  signal?: AbortSignal;
  /** Progress for people (stderr). */
  onProgress?: (line: string) => void;
  /** Seconds between progress lines while a long step prints output. */
  progressEverySeconds?: number;
  now?: () => Date;
  minFreeBytes?: number;
  freeBytes?: (path: string) => Promise<number>;
  /** Facts about this machine for the provider choice (tests set them). */
  host?: Pick<ProviderOptions, "platform" | "nfsServerPrograms" | "kvmDevice">;
  /** Attempts and pause for `docker info` right after `vagrant up` (the daemon may still start). */
  dockerInfoAttempts?: number;
  dockerInfoDelayMs?: number;
}

export interface PlannedCommand {
  title: string;
  /** As a user would type it, environment included. */
  command: string;
  file: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
  unsetEnv: string[];
}

export interface BuildHypriotImageResult {
  dryRun: boolean;
  builderDir: string;
  /** k8slab's own directory for this checkout: logs, the libvirt override, versions.config copies. */
  stateDir: string;
  /** What the checkout does with versions.config (undefined: it is cloned first). */
  checkout?: BuilderCheckout & { summary: string };
  provider: BuilderProvider;
  providerReason: string;
  /** What every vagrant command of the builder needs in its environment. */
  vagrantEnv: Record<string, string>;
  /** libvirt: the Vagrantfile override every vagrant command reads (VAGRANT_VAGRANTFILE). */
  vagrantOverride?: { path: string; text: string };
  /** The checkout's versions.config, which a build replaces while it runs. */
  versionsConfig: string;
  /** Its text for this build; undefined in a dry run before the checkout is cloned. */
  versionsConfigText?: string;
  versions?: VersionsConfig;
  /** A copy of the versions.config of this build, kept after the checkout's own is put back. */
  versionsConfigCopy: string;
  /** Values the checkout will not read, and other things worth knowing, one line each. */
  warnings: string[];
  /** Dry run: every command a build would run, in order; real run: the commands that ran. */
  plan: PlannedCommand[];
  logFile: string;
  kernel?: { file: string; url: string };
  dockerHost?: string;
  dockerOs?: string;
  image?: string;
  imageSize?: number;
  sha256?: string;
  sha256File?: string;
}

const DOCKER_HOST_PLACEHOLDER: Record<BuilderProvider, string> = {
  virtualbox: "tcp://127.0.0.1:<port from vagrant port>",
  libvirt: "tcp://<HostName from vagrant ssh-config>:2375",
};

export async function buildHypriotImage(
  options: BuildHypriotImageOptions,
): Promise<BuildHypriotImageResult> {
  const progress = options.onProgress ?? (() => {});
  const now = options.now ?? (() => new Date());
  const ctx: BuilderRunContext = {
    runner: options.runner ?? runCommand,
    env: options.env,
    ...(options.signal ? { signal: options.signal } : {}),
  };

  // 1. Inputs, checked before anything runs: versions over the checkout's own, kernel, paths.
  const overrides: VersionValues = options.config
    ? await loadVersionsFile(options.config, options.cwd)
    : {};
  const builderDir = resolve(options.cwd, options.builderDir ?? defaultBuilderDir(options.env));
  const pathFailures = staticChecks({ builderDir });
  if (pathFailures.length > 0) throw new PreflightError(pathFailures);
  const stateDir = builderStateDir(options.env, builderDir);
  const needsClone = options.builderDir === undefined && !(await isDir(builderDir));
  if (options.builderDir !== undefined) await checkCheckout(builderDir, true);
  else if (!needsClone) await checkCheckout(builderDir, false);
  if (options.kernelDeb) await checkKernelDeb(options.kernelDeb, options.cwd);
  if (options.kernelHost !== undefined) checkAdvertiseHost(options.kernelHost);
  const version = options.imageVersion ?? overrides.VERSION ?? defaultImageVersion(now());
  const kernelPort = options.kernelPort ?? DEFAULT_KERNEL_PORT;
  const kernelUrlFor = (host: string) =>
    options.kernelDeb
      ? `http://${host}:${kernelPort === 0 ? "PORT" : kernelPort}/${servedName(options.kernelDeb)}`
      : undefined;

  let checkout = needsClone ? undefined : await inspect(builderDir, stateDir);
  const plan = (kernelUrl: string | undefined) =>
    plannedVersions(checkout, overrides, version, kernelUrl, options.kernelDeb !== undefined);
  // Port 0 is not known yet: check with a stand-in.
  let planned = plan(
    kernelUrlFor(options.kernelHost ?? VIRTUALBOX_NAT_HOST)?.replace(":PORT/", ":1/"),
  );
  const staticFailures = staticChecks({ builderDir, kernelUrl: planned.versions.KERNEL_URL });
  if (staticFailures.length > 0) throw new PreflightError(staticFailures);

  // 2. The provider: the same choice for the dry run, the preflight and the build.
  const choice = await chooseProvider(ctx, {
    requested: options.provider ?? "auto",
    builderDir,
    ...options.host,
  });
  const vm = builderVm(choice.provider ?? "virtualbox", builderDir, stateDir, choice.driver);
  const kernelHost =
    options.kernelHost ?? (vm.provider === "libvirt" ? LIBVIRT_HOST_ADDRESS : VIRTUALBOX_NAT_HOST);
  const plannedKernelUrl = kernelUrlFor(kernelHost);
  planned = plan(plannedKernelUrl?.replace(":PORT/", ":1/"));

  const logFile = resolve(
    options.cwd,
    options.logFile ?? join(stateDir, "logs", `build-${version}.log`),
  );
  const versionsPath = join(builderDir, "versions.config");
  const versionsCopy = join(stateDir, "versions.config");
  const warningLines = (warnings: RuleProblem[]) => [
    ...choice.warnings,
    ...warnings.map((w) => `${w.path}: ${w.message}`),
  ];
  /** Say which checkout generation and provider this is, and every warning; return the warnings. */
  const report = (c: BuilderCheckout | undefined, warnings: RuleProblem[]): string[] => {
    if (c) progress(`checkout ${c.dir}: ${describeCheckout(c)}`);
    progress(`builder VM: ${vm.provider} (${choice.reason || "no provider found"})`);
    const lines = warningLines(warnings);
    for (const line of lines) progress(`warning: ${line}`);
    return lines;
  };
  const summary = (c: BuilderCheckout | undefined): Pick<BuildHypriotImageResult, "checkout"> =>
    c ? { checkout: { ...c, summary: describeCheckout(c) } } : {};
  const common = {
    builderDir,
    stateDir,
    provider: vm.provider,
    providerReason: choice.reason,
    vagrantEnv: vm.env,
    ...(vm.override ? { vagrantOverride: vm.override } : {}),
    versionsConfig: versionsPath,
    versionsConfigCopy: versionsCopy,
    logFile,
  };
  const commands = (dockerHost: string, kernelUrl: string | undefined): Step[] => [
    ...(needsClone
      ? [steps.clone(dirname(builderDir), builderDir, options.ref ?? IMAGE_BUILDER_REF)]
      : []),
    steps.up(builderDir, vm),
    steps.endpoint(builderDir, vm),
    ...(kernelUrl ? [steps.checkUrl(builderDir, vm, kernelUrl)] : []),
    steps.dockerInfo(builderDir, dockerHost),
    steps.make(builderDir, dockerHost, version),
  ];

  if (options.dryRun) {
    // Nothing is written anywhere: not in the checkout, not in k8slab's directory. What report()
    // says during a build is part of the result here.
    const failures = choice.failures.map(
      (f) => `preflight would fail: ${f.check}: ${f.message} (${f.hint})`,
    );
    const versions = plannedKernelUrl
      ? { ...planned.versions, KERNEL_URL: plannedKernelUrl }
      : planned.versions;
    return {
      dryRun: true,
      ...common,
      ...summary(checkout),
      ...(checkout ? { versionsConfigText: renderVersionsConfig(versions), versions } : {}),
      warnings: [...warningLines(planned.warnings), ...failures],
      plan: commands(DOCKER_HOST_PLACEHOLDER[vm.provider], plannedKernelUrl).map(toPlanned),
      ...(options.kernelDeb && plannedKernelUrl
        ? { kernel: { file: resolve(options.cwd, options.kernelDeb), url: plannedKernelUrl } }
        : {}),
    };
  }

  // 3. Preflight: programs, provider, disk, paths, URLs.
  progress(
    `preflight: checking vagrant, ${vm.provider}, docker, make${needsClone ? ", git" : ""} and free disk space`,
  );
  await preflight(ctx, {
    builderDir,
    needsClone,
    provider: choice,
    ...(planned.versions.KERNEL_URL ? { kernelUrl: planned.versions.KERNEL_URL } : {}),
    ...(options.minFreeBytes !== undefined ? { minFreeBytes: options.minFreeBytes } : {}),
    ...(options.freeBytes ? { freeBytes: options.freeBytes } : {}),
  });

  let server: KernelServer | undefined;
  let log: WriteStream | undefined;
  let replaced = false;
  const executed: Step[] = [];
  try {
    if (needsClone) {
      await mkdir(dirname(builderDir), { recursive: true });
      const clone = steps.clone(dirname(builderDir), builderDir, options.ref ?? IMAGE_BUILDER_REF);
      progress(`[clone] ${describeStep(clone)}`);
      await runStep(ctx, clone);
      executed.push(clone);
      await checkCheckout(builderDir, false);
      checkout = await inspect(builderDir, stateDir);
      planned = plan(plannedKernelUrl?.replace(":PORT/", ":1/"));
    }
    const warnings = report(checkout, planned.warnings);
    await mkdir(stateDir, { recursive: true });
    await restoreVersionsConfig(builderDir, stateDir);
    if (vm.override) {
      await writeFile(vm.override.path, vm.override.text, { mode: 0o644 });
      progress(
        `vagrant reads ${vm.override.path} (VAGRANT_VAGRANTFILE), which loads the checkout's Vagrantfile`,
      );
    }
    await mkdir(dirname(logFile), { recursive: true });
    log = createWriteStream(logFile, { flags: "a" });
    const logLine = (line: string) => log?.write(`${line}\n`);
    progress(`build output goes to ${logFile}`);

    const run = async (s: Step, tag: string, streamed: boolean): Promise<string> => {
      progress(`[${tag}] ${s.title}: ${describeStep(s)}`);
      logLine(`\n=== ${new Date().toISOString()} ${describeStep(s)} (in ${s.cwd})`);
      const out = await runStep(
        ctx,
        s,
        streamed ? throttled(logLine, progress, tag, options.progressEverySeconds ?? 15) : logLine,
      );
      executed.push(s);
      return out;
    };

    await run(steps.up(builderDir, vm), "vagrant up", true);
    const endpoint = steps.endpoint(builderDir, vm);
    progress(`[vagrant ${endpoint.args[0]}] ${describeStep(endpoint)}`);
    logLine(`\n=== ${describeStep(endpoint)}`);
    const dockerHost = await dockerEndpoint(ctx, builderDir, vm, logLine);
    executed.push(endpoint);
    progress(`builder VM's Docker is at ${dockerHost}`);

    let versions = planned.versions;
    if (options.kernelDeb) {
      // After `vagrant up`: a libvirt VM's network (and the host's address on it) exists now.
      server = await startKernelServer({
        file: resolve(options.cwd, options.kernelDeb),
        advertiseHost: kernelHost,
        port: kernelPort,
        ...(options.kernelBind ? { bindHost: options.kernelBind } : {}),
      });
      versions = plan(server.url).versions;
      progress(
        `kernel: serving ${options.kernelDeb} at ${server.url} (listening on ${server.bindHost}:${server.port})`,
      );
    }
    if (versions.KERNEL_URL) {
      try {
        await run(steps.checkUrl(builderDir, vm, versions.KERNEL_URL), "kernel", false);
      } catch (error) {
        throw new K8slabError(`the builder VM cannot download ${versions.KERNEL_URL}`, {
          hint: server
            ? `the VM must reach this machine at ${kernelHost} (VirtualBox NAT: ${VIRTUALBOX_NAT_HOST}, libvirt: ${LIBVIRT_HOST_ADDRESS}); set --kernel-host to this machine's address on the VM's network (and --kernel-bind)`
            : "make KERNEL_URL reachable from the VM (not localhost), or use --kernel-deb FILE",
          cause: error,
        });
      }
    }

    const os = await waitForDockerOs(ctx, builderDir, vm, dockerHost, logLine, options, progress);
    executed.push(steps.dockerInfo(builderDir, dockerHost));
    if (!/ubuntu/i.test(os)) {
      throw new K8slabError(
        `DOCKER_HOST=${dockerHost} answers with a Docker engine on ${JSON.stringify(os)}, not the builder VM's Ubuntu`,
        {
          hint: `another program holds that address; stop it, then: ${vagrantCommand(builderDir, vm.env, "reload")}`,
        },
      );
    }
    progress(`Docker in the builder VM runs on ${os}`);

    replaced = true;
    await replaceVersionsConfig(builderDir, stateDir, versions);
    progress(
      `wrote ${versionsPath} for this build (VERSION=${versions.VERSION}); the checkout's own comes back afterwards, a copy stays in ${versionsCopy}`,
    );
    await run(steps.make(builderDir, dockerHost, versions.VERSION), "make sd-image", true);

    const image = join(builderDir, `hypriotos-rpi-${versions.VERSION}.img.zip`);
    const sha256File = `${image}.sha256`;
    const { size, sha256 } = await verifyImage(image, sha256File, logFile);
    progress(`built ${image} (${(size / 1024 ** 2).toFixed(0)} MiB, sha256 ${sha256})`);
    return {
      dryRun: false,
      ...common,
      ...summary(checkout),
      versionsConfigText: renderVersionsConfig(versions),
      versions,
      warnings,
      plan: executed.map(toPlanned),
      ...(server && options.kernelDeb
        ? { kernel: { file: resolve(options.cwd, options.kernelDeb), url: server.url } }
        : {}),
      dockerHost,
      dockerOs: os,
      image,
      imageSize: size,
      sha256,
      sha256File,
    };
  } catch (error) {
    if (options.signal?.aborted) {
      throw new K8slabError("the build was interrupted", {
        hint: `the builder VM may still run: ${vagrantCommand(builderDir, vm.env, "halt")}; output so far: ${logFile}`,
        cause: error,
      });
    }
    throw error;
  } finally {
    if (replaced) await restoreVersionsConfig(builderDir, stateDir);
    if (server) {
      await server.close();
      progress("kernel: server stopped");
    }
    if (log) await new Promise<void>((done) => log?.end(() => done()));
  }
}

/** The versions of this build: the checkout's own, then --config, VERSION and a kernel URL. */
function plannedVersions(
  checkout: BuilderCheckout | undefined,
  overrides: VersionValues,
  version: string,
  kernelUrl: string | undefined,
  kernelDeb: boolean,
): { versions: VersionsConfig; warnings: RuleProblem[] } {
  const own = checkout
    ? checkVersions(checkout.values, `${join(checkout.dir, "versions.config")}`)
    : {};
  const merged = checkVersions(
    stripUndefined({
      ...own,
      ...overrides,
      VERSION: version,
      ...(kernelUrl ? { KERNEL_URL: kernelUrl } : {}),
    }),
  );
  const versions = { ...merged, VERSION: version };
  if (!checkout) return { versions, warnings: [] };
  if (kernelDeb && !checkout.reads.includes("KERNEL_URL")) {
    throw new K8slabError(
      `--kernel-deb needs a checkout that reads KERNEL_URL; ${checkout.dir} does not`,
      { exitCode: 2, hint: "use image-builder-rpi v1.8.0 or newer (--builder-dir, --ref)" },
    );
  }
  const warnings = failOnErrors(
    versionsProblems(versions, checkout),
    `these versions do not fit the checkout ${checkout.dir} (${describeCheckout(checkout)})`,
  );
  return { versions, warnings };
}

/** Inspect the checkout; a versions.config left by a killed build is read from k8slab's saved original. */
async function inspect(builderDir: string, stateDir: string): Promise<BuilderCheckout> {
  const current = await readFile(join(builderDir, "versions.config"), "utf8").catch(
    () => undefined,
  );
  if (current?.startsWith(WRITTEN_BY_K8SLAB)) {
    const orig = await readFile(join(stateDir, "versions.config.orig"), "utf8").catch(
      () => undefined,
    );
    if (orig === undefined) {
      throw new K8slabError(
        `${builderDir}/versions.config was written by k8slab, and the checkout's own is not saved`,
        { exitCode: 2, hint: `restore it: git -C ${builderDir} checkout versions.config` },
      );
    }
    return inspectCheckout(builderDir, orig);
  }
  return inspectCheckout(builderDir);
}

/** Save the checkout's versions.config in k8slab's directory (once), then write this build's. */
async function replaceVersionsConfig(
  builderDir: string,
  stateDir: string,
  versions: VersionsConfig,
): Promise<void> {
  const path = join(builderDir, "versions.config");
  const orig = join(stateDir, "versions.config.orig");
  if (!(await isFile(orig))) await copyFile(path, orig);
  const text = renderVersionsConfig(versions);
  await writeFile(join(stateDir, "versions.config"), text, { mode: 0o644 });
  const tmp = `${path}.k8slab-${process.pid}.tmp`;
  await writeFile(tmp, text, { mode: 0o644 });
  await rename(tmp, path);
}

/**
 * Put the checkout's own versions.config back (after a build, or one that was killed), unless
 * someone has replaced k8slab's file in the meantime.
 */
async function restoreVersionsConfig(builderDir: string, stateDir: string): Promise<void> {
  const orig = join(stateDir, "versions.config.orig");
  if (!(await isFile(orig))) return;
  const path = join(builderDir, "versions.config");
  const current = await readFile(path, "utf8").catch(() => undefined);
  if (current === undefined || current.startsWith(WRITTEN_BY_K8SLAB)) await copyFile(orig, path);
  await rm(orig);
}

function toPlanned(s: Step): PlannedCommand {
  return {
    title: s.title,
    command: describeStep(s),
    file: s.file,
    args: s.args,
    cwd: s.cwd,
    env: s.env,
    unsetEnv: s.unsetEnv,
  };
}

/** Pass every line to the log; to people, at most one line per interval with the latest output. */
function throttled(
  logLine: (line: string) => void,
  progress: (line: string) => void,
  tag: string,
  everySeconds: number,
): (line: string) => void {
  const started = Date.now();
  let last = started;
  return (line) => {
    logLine(line);
    const t = Date.now();
    if (t - last >= everySeconds * 1000) {
      last = t;
      const minutes = Math.floor((t - started) / 60_000);
      progress(`[${tag}] ${minutes} min: ${line.slice(0, 160)}`);
    }
  };
}

async function waitForDockerOs(
  ctx: BuilderRunContext,
  dir: string,
  vm: BuilderVm,
  dockerHost: string,
  logLine: (line: string) => void,
  options: BuildHypriotImageOptions,
  progress: (line: string) => void,
): Promise<string> {
  const attempts = Math.max(1, options.dockerInfoAttempts ?? 10);
  const delay = options.dockerInfoDelayMs ?? 3_000;
  for (let i = 1; ; i++) {
    try {
      logLine(`\n=== ${describeStep(steps.dockerInfo(dir, dockerHost))}`);
      return await dockerOs(ctx, dir, vm, dockerHost, logLine);
    } catch (error) {
      if (i >= attempts || options.signal?.aborted) throw error;
      progress(
        `docker info: no answer yet (attempt ${i}/${attempts}), trying again in ${delay / 1000} s`,
      );
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

/** An image-builder-rpi checkout has its Makefile and Vagrantfile at the top. */
async function checkCheckout(dir: string, given: boolean): Promise<void> {
  const missing: string[] = [];
  for (const f of ["Makefile", "Vagrantfile"]) {
    if (!(await isFile(join(dir, f)))) missing.push(f);
  }
  if (missing.length === 0) return;
  throw new K8slabError(`${dir} is not an image-builder-rpi checkout (no ${missing.join(", ")})`, {
    exitCode: 2,
    hint: given
      ? "give --builder-dir a clone of https://github.com/hypriot/image-builder-rpi"
      : `remove ${dir} so that k8slab clones it again, or give --builder-dir a checkout`,
  });
}

async function checkKernelDeb(file: string, cwd: string): Promise<void> {
  if (await isFile(resolve(cwd, file))) return;
  throw new K8slabError(`kernel package ${file} does not exist`, {
    exitCode: 2,
    hint: "give --kernel-deb the path of a raspberrypi-kernel_*.deb (built with hypriot/rpi-kernel)",
  });
}

export async function sha256OfFile(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

async function verifyImage(
  image: string,
  sha256File: string,
  logFile: string,
): Promise<{ size: number; sha256: string }> {
  let size: number;
  try {
    size = (await stat(image)).size;
  } catch {
    throw new K8slabError(`make sd-image finished but ${image} is not there`, {
      hint: `read the build output: ${logFile}`,
    });
  }
  const sha256 = await sha256OfFile(image);
  let expected: string | undefined;
  try {
    expected = /^([0-9a-fA-F]{64})\b/
      .exec((await readFile(sha256File, "utf8")).trim())?.[1]
      ?.toLowerCase();
  } catch {
    throw new K8slabError(`the builder wrote no checksum file ${sha256File}`, {
      hint: `read the build output: ${logFile}`,
    });
  }
  if (expected !== sha256) {
    throw new K8slabError(
      `${image} has sha256 ${sha256}, but ${sha256File} says ${expected ?? "(nothing readable)"}`,
      { hint: "the image is damaged or stale: delete both files and build again" },
    );
  }
  return { size, sha256 };
}
