import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { K8slabError } from "../errors.js";
import type { NetworkMethod } from "./releases.js";

/**
 * What an image-builder-rpi checkout does with versions.config, read from the checkout itself:
 * its own values, which of them builder/build.sh and builder/chroot-script.sh read, and the
 * Raspbian release, Docker channel, kernel source and network setup of the images it builds.
 * Upstream changed all of these over time (v1.9.0 pins a Hypriot kernel with KERNEL_BUILD and
 * hard-codes the edge Docker channel on stretch; master installs the Raspberry Pi archive's
 * kernel on buster, reads DOCKER_CE_CHANNEL and configures eth0 from /boot/network-config), so
 * k8slab asks the checkout instead of assuming one generation.
 */

const ROOTFS_KEYS = ["HYPRIOT_OS_VERSION", "ROOTFS_TAR_CHECKSUM"] as const;
const RAW_IMAGE_KEYS = ["RAW_IMAGE", "RAW_IMAGE_VERSION", "RAW_IMAGE_CHECKSUM"] as const;
/** For builder/chroot-script.sh, which runs in a chroot and sees only exported variables. */
export const CHROOT_KEYS = [
  "KERNEL_BUILD",
  "KERNEL_URL",
  "KERNEL_VERSION",
  "DOCKER_CE_CHANNEL",
  "DOCKER_CE_VERSION",
  "DOCKER_COMPOSE_VERSION",
  "DOCKER_MACHINE_VERSION",
] as const;
/** The variables of versions.config k8slab knows, in the builder's own order. */
export const VERSION_KEYS = [...ROOTFS_KEYS, ...RAW_IMAGE_KEYS, ...CHROOT_KEYS, "VERSION"] as const;
/** versions.config's sections, in the builder's own layout. */
export const VERSIONS_SECTIONS: readonly [string, readonly VersionKey[]][] = [
  ["config vars for the root file system", ROOTFS_KEYS],
  ["name of the ready made raw image for RPi", RAW_IMAGE_KEYS],
  ["specific versions of kernel/firmware and docker tools", CHROOT_KEYS],
  ["the version in the image's name: hypriotos-rpi-<VERSION>.img.zip", ["VERSION"]],
];
export type VersionKey = (typeof VERSION_KEYS)[number];

export const BUILD_SCRIPTS = ["builder/build.sh", "builder/chroot-script.sh"] as const;

export interface BuilderCheckout {
  dir: string;
  /** The checkout's own versions.config values. */
  values: Partial<Record<VersionKey, string>>;
  /** versions.config keys the build scripts read. */
  reads: VersionKey[];
  /** The Raspbian release the chroot script installs Raspberry Pi packages from. */
  distribution?: string;
  /** The distribution of the Docker CE repository the chroot script adds. */
  dockerDistribution?: string;
  /** The Docker CE channel when the chroot script hard-codes it instead of reading DOCKER_CE_CHANNEL. */
  fixedDockerChannel?: string;
  /** KERNEL_BUILD pins a raspberrypi-kernel version, or the newest one is installed. */
  kernel: "pinned" | "newest";
  /** How the images it builds bring up eth0. */
  network: NetworkMethod;
}

const ASSIGNMENT =
  /^\s*(export\s+)?([A-Za-z_][A-Za-z0-9_]*)=("([^"$`\\]*)"|'([^']*)'|([^\s#"'$`\\;&|<>()]*))\s*(#.*)?$/;

/**
 * The assignments of a versions.config, without running it: `[export] NAME="value"  # comment`.
 * Anything else (a command, an expansion) is refused: k8slab rewrites the file from these values.
 */
export function parseVersionsConfigText(
  text: string,
  file = "versions.config",
): Partial<Record<VersionKey, string>> {
  const values: Partial<Record<VersionKey, string>> = {};
  const known = VERSION_KEYS as readonly string[];
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const m = ASSIGNMENT.exec(line);
    const name = m?.[2];
    if (!m || !name) {
      throw new K8slabError(`${file}:${i + 1}: k8slab cannot read this line: ${line}`, {
        exitCode: 2,
        hint: 'versions.config should only assign plain values (NAME="value"); restore it with git checkout versions.config',
      });
    }
    if (!known.includes(name)) {
      throw new K8slabError(
        `${file}:${i + 1}: ${name} is not a versions.config variable k8slab knows`,
        {
          exitCode: 2,
          hint: "k8slab builds with image-builder-rpi v1.7.0 or newer (cloud-init images); use such a checkout",
        },
      );
    }
    values[name as VersionKey] = m[4] ?? m[5] ?? m[6] ?? "";
  });
  return values;
}

/** `$NAME` or `${NAME...}` in a script. */
function readsVariable(script: string, name: string): boolean {
  return new RegExp(`\\$(\\{${name}\\b|${name}\\b)`).test(script);
}

/** Read a checkout's versions.config and build scripts. */
export async function inspectCheckout(
  dir: string,
  versionsText?: string,
): Promise<BuilderCheckout> {
  const scripts: Record<string, string> = {};
  for (const script of BUILD_SCRIPTS) {
    try {
      scripts[script] = await readFile(join(dir, script), "utf8");
    } catch (error) {
      throw new K8slabError(`${dir} has no ${script}: is it a checkout of image-builder-rpi?`, {
        exitCode: 2,
        hint: "give --builder-dir a clone of https://github.com/hypriot/image-builder-rpi",
        cause: error,
      });
    }
  }
  const text = versionsText ?? (await readVersionsText(dir));
  const values = parseVersionsConfigText(text, join(dir, "versions.config"));
  const build = scripts["builder/build.sh"] ?? "";
  const chroot = scripts["builder/chroot-script.sh"] ?? "";
  const all = `${build}\n${chroot}`;
  const reads = VERSION_KEYS.filter((k) => readsVariable(all, k));

  const distribution = /archive\.raspberrypi\.org\/debian\/?\s+([a-z]+)/.exec(chroot)?.[1];
  const docker = /download\.docker\.com\/linux\/raspbian\s+([a-z]+)\s+(\S+)/.exec(chroot);
  const dockerDistribution = docker?.[1];
  let fixedDockerChannel: string | undefined;
  if (docker && !reads.includes("DOCKER_CE_CHANNEL")) {
    // The channel is a shell variable the script sets itself (CHANNEL=edge) or a literal word.
    const word = docker[2] ?? "";
    const variable = /^"?\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?"?$/.exec(word)?.[1];
    fixedDockerChannel = variable
      ? new RegExp(`^\\s*${variable}=([a-z]+)`, "m").exec(chroot)?.[1]
      : word.replace(/"/g, "");
  }
  const network: NetworkMethod =
    /systemctl\s+mask\s+dhcpcd/.test(chroot) || /\/boot\/network-config/.test(chroot)
      ? "network-config"
      : /raspberrypi-net-mods/.test(chroot)
        ? "dhcpcd"
        : "ifupdown";
  return {
    dir,
    values,
    reads,
    ...(distribution ? { distribution } : {}),
    ...(dockerDistribution ? { dockerDistribution } : {}),
    ...(fixedDockerChannel ? { fixedDockerChannel } : {}),
    kernel: reads.includes("KERNEL_BUILD") ? "pinned" : "newest",
    network,
  };
}

async function readVersionsText(dir: string): Promise<string> {
  try {
    return await readFile(join(dir, "versions.config"), "utf8");
  } catch (error) {
    throw new K8slabError(`${dir} has no versions.config`, {
      exitCode: 2,
      hint: `restore it: git -C ${dir} checkout versions.config`,
      cause: error,
    });
  }
}

/** One line for people: which generation the checkout is. */
export function describeCheckout(c: BuilderCheckout): string {
  const kernel =
    c.kernel === "pinned"
      ? "a raspberrypi-kernel pinned by KERNEL_BUILD"
      : "the newest raspberrypi-kernel (KERNEL_BUILD is not read)";
  const docker = c.fixedDockerChannel
    ? `Docker from the ${c.fixedDockerChannel} channel (hard-coded)`
    : "Docker from DOCKER_CE_CHANNEL";
  return `builds ${c.distribution ?? "unknown Raspbian"} images with ${kernel}, ${docker}, eth0 by ${c.network}`;
}
