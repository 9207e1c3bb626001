import { statfs as statfsAsync } from "node:fs/promises";
import { dirname } from "node:path";
import { K8slabError } from "../errors.js";
import { toolVersion, vagrantPlugins, type BuilderRunContext } from "./builder.js";
import {
  anyExists,
  existingVmProvider,
  kvmUsable,
  NFS_SERVER_PROGRAMS,
  type BuilderProvider,
} from "./builder-vm.js";
import { kernelUrlHostProblem } from "./versions-config.js";

/**
 * Checks before a 30-60 minute build, so it does not fail half an hour in. Every check runs and
 * every failure is reported at once, each with what to do about it.
 */

/** Free space the build needs on the builder checkout's disk: rootfs, raw image, image and zip. */
export const MIN_FREE_BYTES = 8 * 1024 ** 3;

export interface PreflightFailure {
  check: string;
  message: string;
  hint: string;
}

export class PreflightError extends K8slabError {
  readonly failures: PreflightFailure[];

  constructor(failures: PreflightFailure[]) {
    super(
      `preflight found ${failures.length} problem${failures.length === 1 ? "" : "s"} before the build:\n` +
        failures.map((f) => `  ${f.check}: ${f.message}\n    hint: ${f.hint}`).join("\n"),
      {
        hint:
          failures.length === 1
            ? failures[0]?.hint
            : "fix the problems above, then run the build again",
      },
    );
    this.name = "PreflightError";
    this.failures = failures;
  }
}

export interface ProviderOptions {
  /** --provider: a provider, or auto (VirtualBox when it is there, else libvirt on Linux). */
  requested: BuilderProvider | "auto";
  builderDir: string;
  /** Default: process.platform. */
  platform?: NodeJS.Platform;
  /** Programs whose presence means an NFS server is installed (tests point elsewhere). */
  nfsServerPrograms?: readonly string[];
  kvmDevice?: string;
}

export interface ProviderChoice {
  /** The provider the build uses; undefined when none is usable (then `failures` says why). */
  provider?: BuilderProvider;
  /** libvirt: kvm, or qemu (software emulation) without a usable /dev/kvm. */
  driver: "kvm" | "qemu";
  /** Why this provider, for progress. */
  reason: string;
  failures: PreflightFailure[];
  warnings: string[];
}

const VIRTUALBOX_REASON =
  "the builder's Vagrantfile chooses VirtualBox and the box ubuntu/xenial64, which exists only for VirtualBox";

/**
 * Which provider the builder VM gets, decided once and used by the dry run, the preflight and the
 * build alike. Asks `VBoxManage --version` and `vagrant plugin list`, nothing else.
 */
export async function chooseProvider(
  ctx: BuilderRunContext,
  options: ProviderOptions,
): Promise<ProviderChoice> {
  const platform = options.platform ?? process.platform;
  const cwd = await existingDir(dirname(options.builderDir));
  const failures: PreflightFailure[] = [];
  const warnings: string[] = [];
  const existing = await existingVmProvider(options.builderDir);
  let vboxFound: boolean | undefined;
  const vbox = async () => (vboxFound ??= (await probe(ctx, "VBoxManage", cwd, [])) !== undefined);
  const libvirtPlugin = async () =>
    platform === "linux" &&
    (await vagrantPlugins(ctx, cwd).then(
      (list) => list.includes("vagrant-libvirt"),
      () => false,
    ));

  let provider: BuilderProvider | undefined;
  let reason: string;
  if (existing && options.requested !== "auto" && options.requested !== existing) {
    failures.push({
      check: "provider",
      message: `the builder VM in ${options.builderDir} was created with ${existing}, not ${options.requested}`,
      hint: `use --provider ${existing}, or remove that VM first (cd ${options.builderDir} && vagrant destroy)`,
    });
    reason = "";
  } else if (existing) {
    provider = existing;
    reason = `the builder VM was created with ${existing}`;
  } else if (
    options.requested === "virtualbox" ||
    (options.requested === "auto" && (await vbox()))
  ) {
    provider = "virtualbox";
    reason = options.requested === "auto" ? "VirtualBox is installed" : "--provider virtualbox";
  } else if (options.requested === "libvirt" || options.requested === "auto") {
    provider = "libvirt";
    reason =
      options.requested === "auto"
        ? "VirtualBox is not installed; k8slab runs the builder's Vagrantfile under vagrant-libvirt with its own override"
        : "--provider libvirt";
  } else {
    reason = "";
  }

  if (provider === "virtualbox" && !(await vbox())) {
    failures.push({
      check: "provider",
      message: `VirtualBox (VBoxManage) was not found, and ${VIRTUALBOX_REASON}`,
      hint:
        platform === "linux"
          ? "install VirtualBox, or install vagrant-libvirt and use --provider libvirt (k8slab overrides the box and provider for it)"
          : "install VirtualBox (on Linux, vagrant-libvirt works too)",
    });
  }
  if (provider === "libvirt") {
    if (platform !== "linux") {
      failures.push({
        check: "provider",
        message: `the builder runs under libvirt only on Linux, and ${VIRTUALBOX_REASON}`,
        hint: "install VirtualBox",
      });
    } else if (!(await libvirtPlugin())) {
      failures.push({
        check: "provider",
        message:
          options.requested === "libvirt"
            ? "the vagrant-libvirt plugin was not found"
            : `neither VirtualBox (VBoxManage) nor the vagrant-libvirt plugin was found, and ${VIRTUALBOX_REASON}`,
        hint: "install VirtualBox, or vagrant-libvirt (Debian/Ubuntu: sudo apt-get install vagrant-libvirt libvirt-daemon-system)",
      });
    } else if (!(await anyExists(options.nfsServerPrograms ?? NFS_SERVER_PROGRAMS))) {
      failures.push({
        check: "NFS server",
        message:
          "under libvirt the checkout is shared with the builder VM over NFS (the image is written there), and no NFS server is installed",
        hint: "sudo apt-get install nfs-kernel-server (Fedora: nfs-utils); Vagrant asks for your sudo password to add the export",
      });
    }
  }
  const driver = (await kvmUsable(options.kvmDevice)) ? "kvm" : "qemu";
  if (provider === "libvirt" && driver === "qemu") {
    warnings.push(
      "no usable /dev/kvm: the builder VM runs under QEMU software emulation and the build takes many hours",
    );
  }
  return { ...(provider ? { provider } : {}), driver, reason, failures, warnings };
}

export interface PreflightOptions {
  builderDir: string;
  /** The kernel URL the build will use (a custom one or the built-in server's). */
  kernelUrl?: string;
  /** True when the checkout will be cloned first (then git is needed). */
  needsClone: boolean;
  minFreeBytes?: number;
  /** Free bytes on the file system holding `path` (tests inject one). */
  freeBytes?: (path: string) => Promise<number>;
  /** The provider chosen by chooseProvider, with what is missing for it. */
  provider: ProviderChoice;
}

/** Checks that need no program: the builder path and the kernel URL. */
export function staticChecks(
  options: Pick<PreflightOptions, "builderDir" | "kernelUrl">,
): PreflightFailure[] {
  const failures: PreflightFailure[] = [];
  // The builder's Makefile uses $(shell pwd) and its Vagrantfile `pwd` unquoted, and the checkout
  // is mounted at the same path inside the VM: a space (or a shell character) breaks both.
  if (/\s/.test(options.builderDir)) {
    failures.push({
      check: "builder path",
      message: `${JSON.stringify(options.builderDir)} contains a space; the builder's Makefile and Vagrantfile cannot handle it`,
      hint: "give --builder-dir a path without spaces (or set XDG_CACHE_HOME to one)",
    });
  } else if (!/^[A-Za-z0-9._/~+@:-]+$/.test(options.builderDir)) {
    failures.push({
      check: "builder path",
      message: `${JSON.stringify(options.builderDir)} contains characters the builder's shell commands would interpret`,
      hint: "give --builder-dir a path of letters, digits and ._-/ only",
    });
  }
  if (options.kernelUrl !== undefined) {
    const problem = kernelUrlProblem(options.kernelUrl);
    if (problem) failures.push(problem);
  }
  return failures;
}

function kernelUrlProblem(url: string): PreflightFailure | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return {
      check: "KERNEL_URL",
      message: `${url} is not a URL`,
      hint: "use an http(s) URL of a raspberrypi-kernel_*.deb, or --kernel-deb FILE",
    };
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    return {
      check: "KERNEL_URL",
      message: `${url} is not http(s); the builder downloads it with curl`,
      hint: "serve the .deb over http(s), or let k8slab do it: --kernel-deb FILE",
    };
  }
  if (!parsed.pathname.endsWith(".deb")) {
    return {
      check: "KERNEL_URL",
      message: `${url} does not end in .deb; the builder installs it with dpkg -i`,
      hint: "point KERNEL_URL at the raspberrypi-kernel_*.deb itself",
    };
  }
  const hostProblem = kernelUrlHostProblem(url);
  if (hostProblem) {
    return {
      check: "KERNEL_URL",
      message: `${url} ${hostProblem}`,
      hint: "VirtualBox NAT guests reach this machine at 10.0.2.2; or use --kernel-deb FILE, which serves it there",
    };
  }
  return undefined;
}

async function defaultFreeBytes(path: string): Promise<number> {
  // The checkout may not exist yet: measure the nearest existing parent.
  let p = path;
  for (let i = 0; i < 64; i++) {
    try {
      const s = await statfsAsync(p);
      return s.bavail * s.bsize;
    } catch {
      const parent = dirname(p);
      if (parent === p) break;
      p = parent;
    }
  }
  return Number.POSITIVE_INFINITY;
}

function gib(bytes: number): string {
  return `${(bytes / 1024 ** 3).toFixed(1)} GiB`;
}

/** Every check; throws one PreflightError listing all failures. */
export async function preflight(ctx: BuilderRunContext, options: PreflightOptions): Promise<void> {
  const failures = staticChecks(options);
  const cwd = dirname(options.builderDir);
  const runIn = await existingDir(cwd);

  const tools: [string, string][] = [
    ["vagrant", "install Vagrant: https://www.vagrantup.com/downloads (or your package manager)"],
    ["docker", "install the Docker CLI; the engine runs inside the builder VM"],
    ["make", "install make (build-essential on Debian/Ubuntu, Xcode command line tools on macOS)"],
  ];
  if (options.needsClone) {
    tools.push([
      "git",
      "install git, or give --builder-dir an existing image-builder-rpi checkout",
    ]);
  }
  const found = new Map<string, string | undefined>();
  for (const [tool, hint] of tools) {
    const version = await probe(ctx, tool, runIn, failures);
    found.set(tool, version);
    if (version === undefined && !failures.some((f) => f.check === tool)) {
      failures.push({ check: tool, message: `${tool} is not on PATH`, hint });
    }
  }

  if (found.get("vagrant") !== undefined) failures.push(...options.provider.failures);

  const min = options.minFreeBytes ?? MIN_FREE_BYTES;
  const free = await (options.freeBytes ?? defaultFreeBytes)(options.builderDir);
  if (free < min) {
    failures.push({
      check: "disk space",
      message: `${gib(free)} free where the builder lives (${options.builderDir}); the build needs about ${gib(min)}`,
      hint: "free some space, or give --builder-dir a path on a bigger disk",
    });
  }

  if (failures.length > 0) throw new PreflightError(failures);
}

async function probe(
  ctx: BuilderRunContext,
  tool: string,
  cwd: string,
  failures: PreflightFailure[],
): Promise<string | undefined> {
  try {
    return await toolVersion(ctx, tool, cwd);
  } catch (error) {
    failures.push({
      check: tool,
      message: `${tool} --version failed: ${(error as Error).message.split("\n")[0]}`,
      hint: `run ${tool} --version yourself and repair the installation`,
    });
    return undefined;
  }
}

async function existingDir(path: string): Promise<string> {
  let p = path;
  for (let i = 0; i < 64; i++) {
    try {
      await statfsAsync(p);
      return p;
    } catch {
      const parent = dirname(p);
      if (parent === p) return p;
      p = parent;
    }
  }
  return p;
}
