import { statfs as statfsAsync } from "node:fs/promises";
import { dirname } from "node:path";
import { K8slabError } from "../errors.js";
import { toolVersion, vagrantPlugins, type BuilderRunContext } from "./builder.js";
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

export interface PreflightOptions {
  builderDir: string;
  /** The kernel URL the build will use (a custom one or the built-in server's). */
  kernelUrl?: string;
  /** True when the checkout will be cloned first (then git is needed). */
  needsClone: boolean;
  minFreeBytes?: number;
  /** Free bytes on the file system holding `path` (tests inject one). */
  freeBytes?: (path: string) => Promise<number>;
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

  if (found.get("vagrant") !== undefined) {
    const vbox = await probe(ctx, "VBoxManage", runIn, []);
    let libvirt = false;
    if (vbox === undefined) {
      try {
        libvirt = (await vagrantPlugins(ctx, runIn)).includes("vagrant-libvirt");
      } catch {
        libvirt = false;
      }
    }
    if (vbox === undefined && !libvirt) {
      failures.push({
        check: "provider",
        message: "neither VirtualBox (VBoxManage) nor the vagrant-libvirt plugin was found",
        hint: "install VirtualBox (the builder's Vagrantfile is written for it), or: vagrant plugin install vagrant-libvirt",
      });
    }
  }

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
