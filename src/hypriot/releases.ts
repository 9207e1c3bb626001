/**
 * What k8slab knows about HypriotOS releases (tags of hypriot/image-builder-rpi), the root file
 * systems they are built on (tags of hypriot/os-rootfs) and the flash tool, read from those
 * projects' own trees at their tags.
 */

export const IMAGE_BUILDER_REPO = "https://github.com/hypriot/image-builder-rpi";
/** The release the seed's versions.config fits (rootfs v2.0.1, raw image v0.2.2, Docker 18.06). */
export const IMAGE_BUILDER_REF = "v1.9.0";

/** How an image brings up eth0, and so where a static address has to go. */
export const NETWORK_METHODS = ["ifupdown", "dhcpcd", "network-config"] as const;
export type NetworkMethod = (typeof NETWORK_METHODS)[number];

export const NETWORK_METHOD_FILES: Record<NetworkMethod, string> = {
  ifupdown: "/etc/network/interfaces.d/eth0",
  dhcpcd: "/etc/dhcpcd.conf",
  "network-config": "/boot/network-config",
};

/** A release tag: v1.12.3, v1.8.0-rc1 (upstream also has a few tags without the v). */
const TAG = /^v?(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:-([0-9A-Za-z.]{1,20}))?$/;

export interface ReleaseTag {
  major: number;
  minor: number;
  patch: number;
  pre?: string;
}

export function parseReleaseTag(tag: string): ReleaseTag | undefined {
  const m = TAG.exec(tag);
  if (!m) return undefined;
  return {
    major: Number(m[1]),
    minor: Number(m[2]),
    patch: Number(m[3]),
    ...(m[4] ? { pre: m[4] } : {}),
  };
}

/** Orders by major.minor.patch; a pre-release (v1.8.0-rc1) counts as its release. */
function compareRelease(a: ReleaseTag, b: ReleaseTag): number {
  return a.major - b.major || a.minor - b.minor || a.patch - b.patch;
}

/** The entry of a table sorted by `from` that covers `tag` (the last one not after it). */
function lookup<T extends { from: string }>(table: readonly T[], tag: string): T | undefined {
  const t = parseReleaseTag(tag);
  if (!t) return undefined;
  let found: T | undefined;
  for (const entry of table) {
    const from = parseReleaseTag(entry.from);
    if (from && compareRelease(t, from) >= 0) found = entry;
  }
  return found;
}

function after(tag: string, newest: string): boolean {
  const t = parseReleaseTag(tag);
  const n = parseReleaseTag(newest);
  return t !== undefined && n !== undefined && compareRelease(t, n) > 0;
}

export interface ReleaseNetwork {
  /** Undefined: the release has no cloud-init, so user-data is not read at all. */
  method?: NetworkMethod;
  /** Why, from the release's builder/chroot-script.sh. */
  why: string;
}

/**
 * eth0 per HypriotOS release, from each tag's builder/chroot-script.sh:
 * - before v1.7.0 there is no cloud-init (the images read /boot/device-init.yaml);
 * - v1.7.x (jessie) keep the os-rootfs file /etc/network/interfaces.d/eth0 (ifupdown);
 * - from v1.8.0 (stretch) raspberrypi-net-mods brings dhcpcd, and the script removes that file
 *   because both together gave eth0 two addresses (hypriot/image-builder-rpi PR #224);
 * - from v1.12.1 the script masks dhcpcd and links /boot/network-config into cloud-init's
 *   NoCloud seed, so cloud-init configures eth0 (through ifupdown) from that file.
 */
const NETWORK_BY_RELEASE: readonly (ReleaseNetwork & { from: string })[] = [
  {
    from: "v0.0.0",
    why: "HypriotOS before v1.7.0 has no cloud-init; it reads /boot/device-init.yaml",
  },
  {
    from: "v1.7.0",
    method: "ifupdown",
    why: "HypriotOS v1.7.x brings eth0 up with ifupdown from /etc/network/interfaces.d/eth0",
  },
  {
    from: "v1.8.0",
    method: "dhcpcd",
    why: "from v1.8.0 HypriotOS runs dhcpcd (raspberrypi-net-mods) and has no /etc/network/interfaces.d/eth0 (a second ifupdown configuration gave eth0 two addresses, hypriot/image-builder-rpi PR #224)",
  },
  {
    from: "v1.12.1",
    method: "network-config",
    why: "from v1.12.1 HypriotOS masks dhcpcd and cloud-init configures eth0 from /boot/network-config",
  },
];

/** The newest release whose scripts k8slab has read. */
export const NEWEST_KNOWN_RELEASE = "v1.12.3";

export function releaseNetwork(release: string): ReleaseNetwork & { known: boolean } {
  const entry = lookup(NETWORK_BY_RELEASE, release);
  const known = !after(release, NEWEST_KNOWN_RELEASE);
  if (!entry) return { why: `${release} is not a release tag`, known: false };
  const { method, why } = entry;
  return { ...(method ? { method } : {}), why, known };
}

/**
 * The Debian release of each hypriot/os-rootfs tag (its builder/build.sh debootstraps it):
 * jessie up to v1.2.3, stretch from v1.2.4, buster from v2.2.0.
 */
const ROOTFS_DISTRIBUTION: readonly { from: string; distribution: string }[] = [
  { from: "v0.0.0", distribution: "jessie" },
  { from: "v1.2.4", distribution: "stretch" },
  { from: "v2.2.0", distribution: "buster" },
];
const NEWEST_KNOWN_ROOTFS = "v2.2.1";

/** The Debian release of a root file system tag, when k8slab knows it. */
export function rootfsDistribution(tag: string): string | undefined {
  if (after(tag, NEWEST_KNOWN_ROOTFS)) return undefined;
  return lookup(ROOTFS_DISTRIBUTION, tag)?.distribution;
}

/** hypriotos-rpi-v1.9.0.img.zip -> v1.9.0; undefined for a name without a release tag. */
export function releaseOfImage(image: string): string | undefined {
  const name = image.split("/").pop() ?? image;
  const m =
    /^hypriotos-rpi-(v\d{1,3}\.\d{1,3}\.\d{1,3}(?:-[0-9A-Za-z.]{1,20})?)\.img(\.zip)?$/.exec(name);
  return m?.[1];
}

export function releaseImageName(release: string): string {
  return `hypriotos-rpi-${release}.img.zip`;
}

/** Where a release's image is published (the seed downloads it from there with curl). */
export function releaseImageUrl(release: string): string {
  return `${IMAGE_BUILDER_REPO}/releases/download/${release}/${releaseImageName(release)}`;
}

/**
 * hypriot/flash: --userdata and --metadata exist since 2.0.0, --file (copies one more file to
 * /boot, e.g. network-config) since 2.3.0. On Linux it runs sudo, hdparm and udevadm.
 */
export const FLASH = {
  release: "2.7.2",
  url: "https://github.com/hypriot/flash/releases/download/2.7.2/flash",
  minimumForFile: "2.3.0",
};

/** How to get flash, and what it needs on Linux. */
export const FLASH_INSTALL = {
  command: `curl -LO ${FLASH.url} && chmod +x flash && sudo mv flash /usr/local/bin/flash`,
  linux:
    "on Linux flash runs sudo, hdparm and udevadm: sudo apt-get install -y hdparm udev (pv shows progress, unzip opens .zip images)",
};

/** What ansible-inventory says about the seed's group names, and why it does not matter. */
export const HYPHEN_NOTE =
  'ansible-inventory warns "Invalid characters were found in group names" about the "-" in the seed\'s group names (cluster-1-master, ...); the playbooks use these names and the warning is harmless';
