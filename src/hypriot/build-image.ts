import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, type WriteStream } from "node:fs";
import { copyFile, mkdir, readFile, rename, stat, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { K8slabError } from "../errors.js";
import { runCommand, type Runner } from "../util/exec.js";
import {
  defaultBuilderDir,
  describeStep,
  dockerOs,
  dockerPort,
  IMAGE_BUILDER_REF,
  runStep,
  steps,
  type BuilderRunContext,
  type Step,
} from "./builder.js";
import {
  checkAdvertiseHost,
  DEFAULT_KERNEL_PORT,
  startKernelServer,
  VIRTUALBOX_NAT_HOST,
  servedName,
  type KernelServer,
} from "./kernel-server.js";
import { preflight, PreflightError, staticChecks } from "./preflight.js";
import {
  checkVersions,
  defaultImageVersion,
  loadVersionsFile,
  renderVersionsConfig,
  seedVersions,
  type VersionsConfig,
  type VersionsConfigInput,
} from "./versions-config.js";

export interface BuildHypriotImageOptions {
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** An image-builder-rpi checkout; default: a clone in the user's cache dir. */
  builderDir?: string;
  /** A YAML file of versions.config values; default: the seed's. */
  config?: string;
  /** Image version (VERSION); default: a new timestamp. */
  imageVersion?: string;
  /** Git ref to clone when the cache has no checkout. */
  ref?: string;
  /** Serve this kernel .deb to the VM and use it as KERNEL_URL. */
  kernelDeb?: string;
  kernelHost?: string;
  kernelBind?: string;
  kernelPort?: number;
  /** Where the build output goes; default: <builder>/k8slab-build-<VERSION>.log. */
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
  versionsConfig: string;
  /** False in a dry run that could not know every value (no checkout yet, or --kernel-port 0). */
  versionsConfigWritten: boolean;
  versionsConfigText: string;
  versions: VersionsConfig;
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

const DOCKER_PORT_PLACEHOLDER = "<port from vagrant port>";

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

  // 1. Inputs: versions (file or seed), image version, kernel.
  const base: VersionsConfigInput = options.config
    ? await loadVersionsFile(options.config, options.cwd)
    : seedVersions();
  const builderDir = resolve(options.cwd, options.builderDir ?? defaultBuilderDir(options.env));
  const needsClone = options.builderDir === undefined && !(await isDir(builderDir));
  if (options.builderDir !== undefined) await checkCheckout(builderDir, true);
  else if (!needsClone) await checkCheckout(builderDir, false);

  const kernelHost = options.kernelHost ?? VIRTUALBOX_NAT_HOST;
  const kernelPort = options.kernelPort ?? DEFAULT_KERNEL_PORT;
  const plannedKernelUrl = options.kernelDeb
    ? `http://${kernelHost}:${kernelPort === 0 ? "PORT" : kernelPort}/${servedName(options.kernelDeb)}`
    : undefined;
  const version = options.imageVersion ?? base.VERSION ?? defaultImageVersion(now());
  const configured = (kernelUrl: string | undefined): VersionsConfig => {
    const v = checkVersions({
      ...base,
      VERSION: version,
      ...(kernelUrl ? { KERNEL_URL: kernelUrl } : {}),
    });
    return { ...v, VERSION: version };
  };
  if (options.kernelDeb) {
    await checkKernelDeb(options.kernelDeb, options.cwd);
    checkAdvertiseHost(kernelHost);
  }
  // Validate with the planned URL (port 0 is not known yet: check with a stand-in).
  let versions = configured(plannedKernelUrl?.replace(":PORT/", ":1/"));

  const staticFailures = staticChecks({ builderDir, kernelUrl: versions.KERNEL_URL });
  if (staticFailures.length > 0) throw new PreflightError(staticFailures);

  const logFile = resolve(
    options.cwd,
    options.logFile ?? join(builderDir, `k8slab-build-${version}.log`),
  );
  const versionsPath = join(builderDir, "versions.config");
  const dockerHostPlanned = `tcp://127.0.0.1:${DOCKER_PORT_PLACEHOLDER}`;
  const plan = (dockerHost: string, kernelUrl: string | undefined): Step[] => [
    ...(needsClone
      ? [steps.clone(dirname(builderDir), builderDir, options.ref ?? IMAGE_BUILDER_REF)]
      : []),
    steps.up(builderDir),
    steps.port(builderDir),
    ...(kernelUrl ? [steps.checkUrl(builderDir, kernelUrl)] : []),
    steps.dockerInfo(builderDir, dockerHost),
    steps.make(builderDir, dockerHost, version),
  ];

  if (options.dryRun) {
    const planned = plan(dockerHostPlanned, plannedKernelUrl);
    // Written only when every value is known: the checkout exists and the kernel port is fixed.
    const unknownPort = plannedKernelUrl?.includes(":PORT/") ?? false;
    const writable = !needsClone && !unknownPort;
    if (unknownPort && plannedKernelUrl) versions = { ...versions, KERNEL_URL: plannedKernelUrl };
    if (writable) await writeVersionsConfig(versionsPath, versions);
    return {
      dryRun: true,
      builderDir,
      versionsConfig: versionsPath,
      versionsConfigWritten: writable,
      versionsConfigText: renderVersionsConfig(versions),
      versions,
      plan: planned.map(toPlanned),
      logFile,
      ...(options.kernelDeb && plannedKernelUrl
        ? { kernel: { file: resolve(options.cwd, options.kernelDeb), url: plannedKernelUrl } }
        : {}),
    };
  }

  // 2. Preflight: programs, provider, disk, paths, URLs.
  progress(
    `preflight: checking vagrant, a provider, docker, make${needsClone ? ", git" : ""} and free disk space`,
  );
  await preflight(ctx, {
    builderDir,
    needsClone,
    ...(versions.KERNEL_URL ? { kernelUrl: versions.KERNEL_URL } : {}),
    ...(options.minFreeBytes !== undefined ? { minFreeBytes: options.minFreeBytes } : {}),
    ...(options.freeBytes ? { freeBytes: options.freeBytes } : {}),
  });

  let server: KernelServer | undefined;
  let log: WriteStream | undefined;
  const executed: Step[] = [];
  try {
    if (needsClone) {
      await mkdir(dirname(builderDir), { recursive: true });
      const clone = steps.clone(dirname(builderDir), builderDir, options.ref ?? IMAGE_BUILDER_REF);
      progress(`[clone] ${describeStep(clone)}`);
      await runStep(ctx, clone);
      executed.push(clone);
      await checkCheckout(builderDir, false);
    }
    await mkdir(dirname(logFile), { recursive: true });
    log = createWriteStream(logFile, { flags: "a" });
    const logLine = (line: string) => log?.write(`${line}\n`);

    if (options.kernelDeb) {
      server = await startKernelServer({
        file: resolve(options.cwd, options.kernelDeb),
        advertiseHost: kernelHost,
        port: kernelPort,
        ...(options.kernelBind ? { bindHost: options.kernelBind } : {}),
      });
      versions = configured(server.url);
      progress(
        `kernel: serving ${options.kernelDeb} at ${server.url} (listening on ${server.bindHost}:${server.port})`,
      );
    }
    await writeVersionsConfig(versionsPath, versions);
    progress(
      `wrote ${versionsPath} (VERSION=${versions.VERSION}); build output goes to ${logFile}`,
    );

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

    await run(steps.up(builderDir), "vagrant up", true);
    progress(`[vagrant port] ${describeStep(steps.port(builderDir))}`);
    logLine(`\n=== ${describeStep(steps.port(builderDir))}`);
    const port = await dockerPort(ctx, builderDir, logLine);
    executed.push(steps.port(builderDir));
    const dockerHost = `tcp://127.0.0.1:${port}`;
    progress(`builder VM's Docker is at ${dockerHost}`);

    if (versions.KERNEL_URL) {
      try {
        await run(steps.checkUrl(builderDir, versions.KERNEL_URL), "kernel", false);
      } catch (error) {
        throw new K8slabError(`the builder VM cannot download ${versions.KERNEL_URL}`, {
          hint: server
            ? `VirtualBox NAT guests reach this machine at ${VIRTUALBOX_NAT_HOST}; for another provider set --kernel-host to this machine's address on the VM's network (and --kernel-bind)`
            : "make KERNEL_URL reachable from the VM (not localhost), or use --kernel-deb FILE",
          cause: error,
        });
      }
    }

    const os = await waitForDockerOs(ctx, builderDir, dockerHost, logLine, options, progress);
    executed.push(steps.dockerInfo(builderDir, dockerHost));
    if (!/ubuntu/i.test(os)) {
      throw new K8slabError(
        `DOCKER_HOST=${dockerHost} answers with a Docker engine on ${JSON.stringify(os)}, not the builder VM's Ubuntu`,
        {
          hint: `another program holds port ${port}; stop it, then: cd ${builderDir} && vagrant reload`,
        },
      );
    }
    progress(`Docker in the builder VM runs on ${os}`);

    await run(steps.make(builderDir, dockerHost, versions.VERSION), "make sd-image", true);

    const image = join(builderDir, `hypriotos-rpi-${versions.VERSION}.img.zip`);
    const sha256File = `${image}.sha256`;
    const { size, sha256 } = await verifyImage(image, sha256File, logFile);
    progress(`built ${image} (${(size / 1024 ** 2).toFixed(0)} MiB, sha256 ${sha256})`);
    return {
      dryRun: false,
      builderDir,
      versionsConfig: versionsPath,
      versionsConfigWritten: true,
      versionsConfigText: renderVersionsConfig(versions),
      versions,
      plan: executed.map(toPlanned),
      logFile,
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
        hint: `the builder VM may still run: cd ${builderDir} && vagrant halt; output so far: ${logFile}`,
        cause: error,
      });
    }
    throw error;
  } finally {
    if (server) {
      await server.close();
      progress("kernel: server stopped");
    }
    if (log) await new Promise<void>((done) => log?.end(() => done()));
  }
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
      return await dockerOs(ctx, dir, dockerHost, logLine);
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
    try {
      if (!(await stat(join(dir, f))).isFile()) missing.push(f);
    } catch {
      missing.push(f);
    }
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
  try {
    if ((await stat(resolve(cwd, file))).isFile()) return;
  } catch {
    // reported below
  }
  throw new K8slabError(`kernel package ${file} does not exist`, {
    exitCode: 2,
    hint: "give --kernel-deb the path of a raspberrypi-kernel_*.deb (built with hypriot/rpi-kernel)",
  });
}

/** Write versions.config atomically, keeping the builder's own file once as versions.config.orig. */
export async function writeVersionsConfig(path: string, versions: VersionsConfig): Promise<void> {
  const orig = `${path}.orig`;
  try {
    await stat(orig);
  } catch {
    try {
      await copyFile(path, orig);
    } catch {
      // no original to keep
    }
  }
  const tmp = `${path}.k8slab-${process.pid}.tmp`;
  await writeFile(tmp, renderVersionsConfig(versions), { mode: 0o644 });
  await rename(tmp, path);
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
