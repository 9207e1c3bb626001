import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { z } from "zod";
import { K8slabError } from "../errors.js";
import { validateYamlText } from "../lab/validate-yaml.js";
import { InvalidFileError, type RuleProblem } from "../lab/problems.js";
import { singleQuote } from "../util/quote.js";

/**
 * The inputs of image-builder-rpi's `versions.config`, which its builder/build.sh sources with bash
 * inside the build container. Keys are the builder's own variable names, so a user can copy them
 * from the builder's file. Every value is checked against a narrow pattern: the file is shell code.
 */

const SHA256_TEXT = /^[0-9a-fA-F]{64}$/;
/** HYPRIOT_OS_VERSION and RAW_IMAGE_VERSION are release tags: v2.0.1, v0.2.2. */
const RELEASE_TAG = /^v\d{1,3}\.\d{1,3}\.\d{1,3}(-[0-9A-Za-z.]{1,20})?$/;
/** Hypriot kernel builds are named by their build time: 20180422-141901. */
const KERNEL_BUILD = /^\d{8}-\d{6}$/;
const KERNEL_VERSION = /^\d{1,2}\.\d{1,3}\.\d{1,3}$/;
/** Debian package versions of docker-ce: 18.06.1~ce~3-0~raspbian, 5:19.03.8~3-0~raspbian-buster. */
const DEB_VERSION = /^(\d{1,3}:)?\d{1,4}\.\d{1,4}(\.\d{1,4})?[0-9A-Za-z.~+-]{0,60}$/;
/** docker-compose / docker-machine versions: 1.22.0, 0.15.0 (old Hypriot packages: 1.7.1-40). */
const TOOL_VERSION = /^\d{1,3}\.\d{1,3}\.\d{1,3}(-[0-9A-Za-z.]{1,20})?$/;
const RAW_IMAGE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.img$/;
/** The image version ends up in a file name: hypriotos-rpi-<VERSION>.img.zip. */
export const IMAGE_VERSION = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** A URL made of characters that mean nothing to a shell, ending in .deb. */
const KERNEL_URL =
  /^https?:\/\/[A-Za-z0-9]([A-Za-z0-9.-]{0,252})(:\d{1,5})?\/[A-Za-z0-9._~%+/-]{0,1000}\.deb$/;

export const DOCKER_CE_CHANNELS = ["stable", "test", "edge", "nightly"] as const;

const sha256 = z
  .string()
  .regex(SHA256_TEXT, "must be a sha256 checksum: 64 hex digits")
  .transform((s) => s.toLowerCase());

export const kernelUrlSchema = z
  .string()
  .regex(
    KERNEL_URL,
    "must be an http(s) URL of a .deb file, made of letters, digits and ._~%+-/ only",
  )
  .superRefine((url, ctx) => {
    const problem = kernelUrlHostProblem(url);
    if (problem) ctx.addIssue({ code: "custom", message: problem });
  });

export const versionsInputSchema = z.strictObject({
  HYPRIOT_OS_VERSION: z
    .string()
    .regex(RELEASE_TAG, "must be a release tag of hypriot/os-rootfs such as v2.0.1")
    .describe("Release of hypriot/os-rootfs the root file system comes from."),
  ROOTFS_TAR_CHECKSUM: sha256.describe("sha256 of rootfs-armhf-raspbian-<version>.tar.gz."),
  RAW_IMAGE: z
    .string()
    .regex(RAW_IMAGE, "must be a file name ending in .img such as rpi-raw.img")
    .default("rpi-raw.img"),
  RAW_IMAGE_VERSION: z
    .string()
    .regex(RELEASE_TAG, "must be a release tag of hypriot/image-builder-raw such as v0.2.2"),
  RAW_IMAGE_CHECKSUM: sha256.describe("sha256 of <RAW_IMAGE>.zip."),
  KERNEL_BUILD: z
    .string()
    .regex(KERNEL_BUILD, "must be a Hypriot kernel build such as 20180422-141901")
    .optional(),
  KERNEL_URL: kernelUrlSchema.optional(),
  KERNEL_VERSION: z
    .string()
    .regex(KERNEL_VERSION, "must be a kernel version such as 4.14.34")
    .optional(),
  DOCKER_CE_CHANNEL: z.enum(DOCKER_CE_CHANNELS).default("stable"),
  DOCKER_CE_VERSION: z
    .string()
    .regex(DEB_VERSION, "must be a docker-ce package version such as 18.06.1~ce~3-0~raspbian"),
  DOCKER_COMPOSE_VERSION: z.string().regex(TOOL_VERSION, "must be a version such as 1.22.0"),
  DOCKER_MACHINE_VERSION: z.string().regex(TOOL_VERSION, "must be a version such as 0.15.0"),
  VERSION: z
    .string()
    .regex(
      IMAGE_VERSION,
      "must be letters, digits and ._- (it becomes part of the image file name)",
    )
    .optional()
    .describe("Version of the built image; default: a new timestamp for every build."),
});

export type VersionsInput = z.input<typeof versionsInputSchema>;
export type VersionsConfigInput = z.output<typeof versionsInputSchema>;
/** The values written to versions.config: VERSION is always set. */
export type VersionsConfig = VersionsConfigInput & { VERSION: string };

/** The seed 002 versions (HypriotOS rootfs v2.0.1, kernel 4.14.34, Docker 18.06.1). */
export function seedVersions(): VersionsConfigInput {
  return {
    HYPRIOT_OS_VERSION: "v2.0.1",
    ROOTFS_TAR_CHECKSUM: "d1e7e6d48a25b4a206c5df99ecb8815388ec6945e4f97e78413d5a80778d4137",
    RAW_IMAGE: "rpi-raw.img",
    RAW_IMAGE_VERSION: "v0.2.2",
    RAW_IMAGE_CHECKSUM: "2fbeb13b7b0f2308dbd0d82780b54c33003ad43d145ff08498b25fb8bbe1c2c6",
    KERNEL_BUILD: "20180422-141901",
    KERNEL_VERSION: "4.14.34",
    DOCKER_CE_CHANNEL: "stable",
    DOCKER_CE_VERSION: "18.06.1~ce~3-0~raspbian",
    DOCKER_COMPOSE_VERSION: "1.22.0",
    DOCKER_MACHINE_VERSION: "0.15.0",
  };
}

/** A new image version for every build, so a stale image is never taken for a fresh one. */
export function defaultImageVersion(now: Date): string {
  const p = (n: number, w = 2) => String(n).padStart(w, "0");
  const stamp =
    `${now.getUTCFullYear()}${p(now.getUTCMonth() + 1)}${p(now.getUTCDate())}` +
    `-${p(now.getUTCHours())}${p(now.getUTCMinutes())}${p(now.getUTCSeconds())}`;
  return `k8slab-${stamp}`;
}

/** Why a kernel URL's host cannot be reached from inside the builder VM, if it cannot. */
export function kernelUrlHostProblem(url: string): string | undefined {
  let host: string;
  try {
    host = new URL(url).hostname.toLowerCase();
  } catch {
    return "is not a URL";
  }
  if (
    host === "localhost" ||
    host.endsWith(".localhost") ||
    /^127\./.test(host) ||
    host === "0.0.0.0" ||
    host === "[::1]" ||
    host === "::1"
  ) {
    return `points at ${host}, which inside the builder VM is the VM itself, not your machine`;
  }
  return undefined;
}

function versionsRules(v: VersionsConfigInput): RuleProblem[] {
  const problems: RuleProblem[] = [];
  if (v.KERNEL_BUILD === undefined && v.KERNEL_URL === undefined) {
    problems.push({
      severity: "error",
      path: "",
      message: "set KERNEL_BUILD (a Hypriot kernel package) or KERNEL_URL (a kernel .deb)",
      hint: "the seed uses KERNEL_BUILD: 20180422-141901",
    });
  }
  return problems;
}

/** Validate values given in code (defaults merged with overrides); throws with every problem. */
export function checkVersions(values: VersionsInput, what = "versions"): VersionsConfigInput {
  const parsed = versionsInputSchema.safeParse(values);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join(".")}: ${i.message}`);
    throw new K8slabError(`invalid ${what}:\n${lines.join("\n")}`, {
      exitCode: 2,
      hint: "fix the values above (see: k8slab build-hypriot-image --help)",
    });
  }
  const rules = versionsRules(parsed.data).filter((p) => p.severity === "error");
  if (rules.length > 0) {
    throw new K8slabError(`invalid ${what}: ${rules.map((r) => r.message).join("; ")}`, {
      exitCode: 2,
      hint: rules[0]?.hint,
    });
  }
  return parsed.data;
}

/** Read a --config file: a YAML map of the builder's variables; missing keys take the seed's. */
export async function loadVersionsFile(file: string, cwd: string): Promise<VersionsConfigInput> {
  const path = resolve(cwd, file);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    throw new K8slabError(`cannot read ${file}: ${(error as Error).message}`, {
      exitCode: 2,
      hint: "give --config a YAML file of versions.config values (HYPRIOT_OS_VERSION: v2.0.1, ...)",
      cause: error,
    });
  }
  // Keys the file leaves out take the seed's values; each given value is checked with its line.
  const { value, problems } = validateYamlText(file, text, versionsInputSchema.partial());
  if (!value) {
    throw new InvalidFileError(
      file,
      "versions file",
      problems,
      "fix the lines above; keys are the builder's variables (HYPRIOT_OS_VERSION: v2.0.1, ...)",
    );
  }
  return checkVersions({ ...seedVersions(), ...stripUndefined(value) }, file);
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** Variables that must be exported: builder/chroot-script.sh runs in a chroot and sees only these. */
export const EXPORTED = [
  "KERNEL_BUILD",
  "KERNEL_URL",
  "KERNEL_VERSION",
  "DOCKER_CE_CHANNEL",
  "DOCKER_CE_VERSION",
  "DOCKER_COMPOSE_VERSION",
  "DOCKER_MACHINE_VERSION",
] as const;

/** The text of versions.config, in the builder's own layout; only the chroot's variables exported. */
export function renderVersionsConfig(v: VersionsConfig): string {
  const line = (name: keyof VersionsConfig): string[] => {
    const value = v[name];
    if (value === undefined) return [];
    const exported = (EXPORTED as readonly string[]).includes(name);
    return [`${exported ? "export " : ""}${name}=${singleQuote(value)}`];
  };
  return [
    "# versions.config written by k8slab build-hypriot-image; builder/build.sh sources it with bash.",
    "# Only exported variables reach builder/chroot-script.sh, which runs in a chroot.",
    "",
    "# config vars for the root file system",
    ...line("HYPRIOT_OS_VERSION"),
    ...line("ROOTFS_TAR_CHECKSUM"),
    "",
    "# name of the ready made raw image for RPi",
    ...line("RAW_IMAGE"),
    ...line("RAW_IMAGE_VERSION"),
    ...line("RAW_IMAGE_CHECKSUM"),
    "",
    "# specific versions of kernel/firmware and docker tools",
    ...line("KERNEL_BUILD"),
    ...line("KERNEL_URL"),
    ...line("KERNEL_VERSION"),
    ...line("DOCKER_CE_CHANNEL"),
    ...line("DOCKER_CE_VERSION"),
    ...line("DOCKER_COMPOSE_VERSION"),
    ...line("DOCKER_MACHINE_VERSION"),
    "",
    "# the version in the image's name: hypriotos-rpi-<VERSION>.img.zip",
    ...line("VERSION"),
    "",
  ].join("\n");
}
