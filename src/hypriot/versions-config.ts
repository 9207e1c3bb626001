import { readdir, readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { z } from "zod";
import { K8slabError } from "../errors.js";
import { validateYamlText } from "../lab/validate-yaml.js";
import {
  formatProblem,
  InvalidFileError,
  ruleError,
  ruleWarning,
  type RuleProblem,
} from "../lab/problems.js";
import { singleQuote } from "../util/quote.js";
import { builtinPiLabsDir, isFile } from "./pi-lab.js";
import {
  CHROOT_KEYS,
  VERSION_KEYS,
  VERSIONS_SECTIONS,
  type BuilderCheckout,
  type VersionKey,
} from "./builder-checkout.js";
import { rootfsDistribution } from "./releases.js";

/**
 * The inputs of image-builder-rpi's `versions.config`, which its builder/build.sh sources with bash
 * inside the build container. Keys are the builder's own variable names, so a user can copy them
 * from the builder's file. Every value is checked against a narrow pattern: the file is shell code.
 * Which keys a build needs depends on the checkout (see builder-checkout.ts), so every key is
 * optional here and checked against the checkout by versionsProblems.
 */

const SHA256_TEXT = /^[0-9a-fA-F]{64}$/;
/** HYPRIOT_OS_VERSION and RAW_IMAGE_VERSION are release tags: v2.0.1, v0.2.2. */
const RELEASE_TAG = /^v\d{1,3}\.\d{1,3}\.\d{1,3}(-[0-9A-Za-z.]{1,20})?$/;
/**
 * raspberrypi-kernel package versions: Hypriot's build times (20180422-141901, up to v1.9.0) and
 * Debian versions of the Raspberry Pi archive's package (1.20190215-1, 1.20190925+1-1).
 */
const KERNEL_PACKAGE_VERSION = /^(\d{1,5}:)?\d[0-9A-Za-z.+~-]{0,80}$/;
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
    .optional()
    .describe("Release of hypriot/os-rootfs the root file system comes from."),
  ROOTFS_TAR_CHECKSUM: sha256
    .optional()
    .describe("sha256 of rootfs-armhf-raspbian-<version>.tar.gz."),
  RAW_IMAGE: z
    .string()
    .regex(RAW_IMAGE, "must be a file name ending in .img such as rpi-raw.img")
    .optional(),
  RAW_IMAGE_VERSION: z
    .string()
    .regex(RELEASE_TAG, "must be a release tag of hypriot/image-builder-raw such as v0.2.2")
    .optional(),
  RAW_IMAGE_CHECKSUM: sha256.optional().describe("sha256 of <RAW_IMAGE>.zip."),
  KERNEL_BUILD: z
    .string()
    .regex(
      KERNEL_PACKAGE_VERSION,
      "must be a raspberrypi-kernel package version such as 20180422-141901 or 1.20190925+1-1",
    )
    .optional(),
  KERNEL_URL: kernelUrlSchema.optional(),
  KERNEL_VERSION: z
    .string()
    .regex(KERNEL_VERSION, "must be a kernel version such as 4.14.34")
    .optional(),
  DOCKER_CE_CHANNEL: z.enum(DOCKER_CE_CHANNELS).optional(),
  DOCKER_CE_VERSION: z
    .string()
    .regex(DEB_VERSION, "must be a docker-ce package version such as 18.06.1~ce~3-0~raspbian")
    .optional(),
  DOCKER_COMPOSE_VERSION: z
    .string()
    .regex(TOOL_VERSION, "must be a version such as 1.22.0")
    .optional(),
  DOCKER_MACHINE_VERSION: z
    .string()
    .regex(TOOL_VERSION, "must be a version such as 0.15.0")
    .optional(),
  VERSION: z
    .string()
    .regex(
      IMAGE_VERSION,
      "must be letters, digits and ._- (it becomes part of the image file name)",
    )
    .optional()
    .describe("Version of the built image; default: a new timestamp for every build."),
});

export type VersionValues = z.output<typeof versionsInputSchema>;
/** The values written to versions.config: VERSION is always set. */
export type VersionsConfig = VersionValues & { VERSION: string };

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

/** Check values against the patterns; throws with every problem (exit 2). */
export function checkVersions(
  values: Readonly<Record<string, string | undefined>>,
  what = "versions",
): VersionValues {
  const parsed = versionsInputSchema.safeParse(values);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join(".")}: ${i.message}`);
    throw new K8slabError(`invalid ${what}:\n${lines.join("\n")}`, {
      exitCode: 2,
      hint: "fix the values above (see: k8slab build-hypriot-image --help)",
    });
  }
  return parsed.data;
}

/**
 * Variables a build cannot do without when its scripts read them: all but the kernel's (checked
 * on their own: KERNEL_URL is optional, KERNEL_BUILD needed only without it), KERNEL_VERSION
 * (read by no version) and VERSION (k8slab always sets it).
 */
const OPTIONAL_WHEN_READ: readonly VersionKey[] = [
  "KERNEL_BUILD",
  "KERNEL_URL",
  "KERNEL_VERSION",
  "VERSION",
];

/**
 * The values against what the checkout does with them: errors for a build that would fail (a
 * variable it reads is unset, a root file system of another Debian release than its packages, a
 * docker-ce package of another distribution) and a warning for every value it will not read.
 */
export function versionsProblems(v: VersionValues, c: BuilderCheckout): RuleProblem[] {
  const problems: RuleProblem[] = [];
  for (const key of VERSION_KEYS) {
    if (!OPTIONAL_WHEN_READ.includes(key) && c.reads.includes(key) && v[key] === undefined) {
      problems.push(
        ruleError(key, `this checkout reads ${key}, but it has no value`, `set ${key} in --config`),
      );
    }
  }
  const kernelUrl = v.KERNEL_URL !== undefined && c.reads.includes("KERNEL_URL");
  if (c.kernel === "pinned" && v.KERNEL_BUILD === undefined && !kernelUrl) {
    problems.push(
      ruleError(
        "KERNEL_BUILD",
        "this checkout installs raspberrypi-kernel=${KERNEL_BUILD} unless KERNEL_URL is set: set one of them",
        "the seed uses KERNEL_BUILD: 20180422-141901",
      ),
    );
  }
  for (const key of VERSION_KEYS) {
    const value = v[key];
    if (value === undefined || c.reads.includes(key)) continue;
    problems.push(ruleWarning(key, `${key}=${value} has no effect: ${unreadReason(key, c)}`));
  }
  const rootfs = v.HYPRIOT_OS_VERSION ? rootfsDistribution(v.HYPRIOT_OS_VERSION) : undefined;
  if (rootfs && c.distribution && rootfs !== c.distribution) {
    problems.push(
      ruleError(
        "HYPRIOT_OS_VERSION",
        `${v.HYPRIOT_OS_VERSION} is a ${rootfs} root file system, but this checkout installs packages for ${c.distribution}`,
        `use the root file system of this checkout's own versions.config (${c.values.HYPRIOT_OS_VERSION ?? "see the file"}), or a checkout of the ${rootfs} generation (--builder-dir, --ref)`,
      ),
    );
  }
  const docker = v.DOCKER_CE_VERSION;
  if (docker && c.dockerDistribution) {
    const named = /raspbian-([a-z]+)$/.exec(docker)?.[1];
    if (named && named !== c.dockerDistribution) {
      problems.push(
        ruleError(
          "DOCKER_CE_VERSION",
          `${docker} is a package for ${named}, but this checkout installs Docker from raspbian ${c.dockerDistribution}`,
          `use this checkout's own DOCKER_CE_VERSION (${c.values.DOCKER_CE_VERSION ?? "see its versions.config"})`,
        ),
      );
    } else if (!named && c.dockerDistribution !== "jessie" && c.dockerDistribution !== "stretch") {
      problems.push(
        ruleWarning(
          "DOCKER_CE_VERSION",
          `${docker} names no distribution, but the packages of raspbian ${c.dockerDistribution} do (such as ${c.values.DOCKER_CE_VERSION ?? `5:19.03.12~3-0~raspbian-${c.dockerDistribution}`}); apt may not find it`,
        ),
      );
    }
  }
  return problems;
}

function unreadReason(key: VersionKey, c: BuilderCheckout): string {
  if (key === "DOCKER_CE_CHANNEL" && c.fixedDockerChannel) {
    return `this checkout installs Docker from the ${c.fixedDockerChannel} channel, hard-coded in builder/chroot-script.sh`;
  }
  if (key === "KERNEL_BUILD") {
    return "this checkout installs the newest raspberrypi-kernel (or KERNEL_URL) and never reads KERNEL_BUILD";
  }
  return "neither builder/build.sh nor builder/chroot-script.sh of this checkout reads it";
}

/** Throw the errors among the problems (exit 2); return the warnings. */
export function failOnErrors(problems: RuleProblem[], what: string): RuleProblem[] {
  const errors = problems.filter((p) => p.severity === "error");
  if (errors.length > 0) {
    throw new K8slabError(
      `${what}:\n${errors
        .map(({ hint, ...p }) =>
          formatProblem(errors.length === 1 ? p : { ...p, ...(hint ? { hint } : {}) }),
        )
        .map((line) => `  ${line}`)
        .join("\n")}`,
      {
        exitCode: 2,
        hint:
          errors.length === 1
            ? errors[0]?.hint
            : "fix the values above; k8slab build-hypriot-image --dry-run shows what it would write",
      },
    );
  }
  return problems.filter((p) => p.severity === "warning");
}

/** Built-in versions files (`--config seed-002`) live in labs/pi/versions/. */
export function builtinVersionsDir(): string {
  return join(builtinPiLabsDir(), "versions");
}

/** A --config argument: a built-in name such as seed-002, or a path. */
async function resolveVersionsFile(file: string, cwd: string): Promise<string> {
  const path = resolve(cwd, file);
  if (!/^[a-z0-9-]+$/.test(file) || (await isFile(path))) return path;
  const builtin = join(builtinVersionsDir(), `${file}.yaml`);
  if (await isFile(builtin)) return builtin;
  const names = (await readdir(builtinVersionsDir()).catch(() => []))
    .filter((f) => f.endsWith(".yaml"))
    .map((f) => f.slice(0, -".yaml".length));
  throw new K8slabError(`there is no versions file ${file} and no built-in one of that name`, {
    exitCode: 2,
    hint: `built-in: ${names.join(", ")}; or give a path to a YAML file of versions.config values`,
  });
}

/** Read a --config file: a YAML map of some of the builder's variables, each checked with its line. */
export async function loadVersionsFile(file: string, cwd: string): Promise<VersionValues> {
  const path = await resolveVersionsFile(file, cwd);
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
  const { value, problems } = validateYamlText(file, text, versionsInputSchema);
  if (!value) {
    throw new InvalidFileError(
      file,
      "versions file",
      problems,
      "fix the lines above; keys are the builder's variables (HYPRIOT_OS_VERSION: v2.0.1, ...)",
    );
  }
  return stripUndefined(value);
}

export function stripUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}

/** Variables that must be exported: builder/chroot-script.sh runs in a chroot and sees only these. */
export const EXPORTED: readonly string[] = CHROOT_KEYS;

/** First line of every versions.config k8slab writes; marks a file left behind by a killed build. */
export const WRITTEN_BY_K8SLAB =
  "# versions.config written by k8slab build-hypriot-image; builder/build.sh sources it with bash.";

/** The text of versions.config, in the builder's own layout; only the chroot's variables exported. */
export function renderVersionsConfig(v: VersionsConfig): string {
  const line = (name: VersionKey): string[] => {
    const value = v[name];
    if (value === undefined) return [];
    return [`${EXPORTED.includes(name) ? "export " : ""}${name}=${singleQuote(value)}`];
  };
  return [
    WRITTEN_BY_K8SLAB,
    "# Only exported variables reach builder/chroot-script.sh, which runs in a chroot.",
    ...VERSIONS_SECTIONS.flatMap(([comment, keys]) => ["", `# ${comment}`, ...keys.flatMap(line)]),
    "",
  ].join("\n");
}
