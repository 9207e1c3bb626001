import { describe, expect, it } from "vitest";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { K8slabError } from "../src/errors.js";
import {
  checkVersions,
  defaultImageVersion,
  EXPORTED,
  loadVersionsFile,
  renderVersionsConfig,
  seedVersions,
  type VersionsConfig,
} from "../src/hypriot/versions-config.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();

const NAMES = [
  "HYPRIOT_OS_VERSION",
  "ROOTFS_TAR_CHECKSUM",
  "RAW_IMAGE",
  "RAW_IMAGE_VERSION",
  "RAW_IMAGE_CHECKSUM",
  "KERNEL_BUILD",
  "KERNEL_URL",
  "KERNEL_VERSION",
  "DOCKER_CE_CHANNEL",
  "DOCKER_CE_VERSION",
  "DOCKER_COMPOSE_VERSION",
  "DOCKER_MACHINE_VERSION",
  "VERSION",
] as const;

function full(): VersionsConfig {
  return {
    ...checkVersions({
      ...seedVersions(),
      KERNEL_URL: "http://10.0.2.2:8081/raspberrypi-kernel_20181007-162516_armhf.deb",
    }),
    VERSION: "k8slab-20240102-030405",
  };
}

/** Source the file with `bash -u` and print every variable, NUL-separated. */
async function sourced(file: string): Promise<Record<string, string>> {
  const script = `set -eu; source "$1"; printf '%s\\0' ${NAMES.map((n) => `"\${${n}-<unset>}"`).join(" ")}`;
  const { stdout } = await execa("bash", ["-uc", script, "bash", file], {
    stripFinalNewline: false,
  });
  const values = stdout.split("\0").slice(0, NAMES.length);
  return Object.fromEntries(NAMES.map((n, i) => [n, values[i] ?? ""]));
}

/** Which variables a child process of the sourcing shell sees (only exported ones). */
async function exportedToChild(file: string): Promise<string[]> {
  const { stdout } = await execa("env", [
    "-i",
    "PATH=/usr/bin:/bin",
    "bash",
    "-uc",
    'source "$1"; env',
    "bash",
    file,
  ]);
  const names = stdout.split("\n").map((l) => l.split("=")[0]);
  return NAMES.filter((n) => names.includes(n));
}

describe("versions.config", () => {
  it("is sourced by bash -u without error and yields exactly the values given", async () => {
    const dir = await tmp();
    const file = join(dir, "versions.config");
    const v = full();
    await writeFile(file, renderVersionsConfig(v));
    const got = await sourced(file);
    for (const n of NAMES) expect(got[n], n).toBe(String(v[n]));
  });

  it("exports the variables the builder's chroot needs, and only those", async () => {
    const dir = await tmp();
    const file = join(dir, "versions.config");
    await writeFile(file, renderVersionsConfig(full()));
    expect(await exportedToChild(file)).toEqual(
      NAMES.filter((n) => (EXPORTED as readonly string[]).includes(n)),
    );
    expect(EXPORTED).toContain("KERNEL_BUILD");
    expect(EXPORTED).toContain("DOCKER_CE_VERSION");
  });

  it("leaves out KERNEL_URL when it is not set (the builder then installs KERNEL_BUILD)", async () => {
    const dir = await tmp();
    const file = join(dir, "versions.config");
    await writeFile(
      file,
      renderVersionsConfig({ ...checkVersions(seedVersions()), VERSION: "x1" }),
    );
    const got = await sourced(file);
    expect(got.KERNEL_URL).toBe("<unset>");
    expect(got.KERNEL_BUILD).toBe("20180422-141901");
    expect(got.DOCKER_CE_VERSION).toBe("18.06.1~ce~3-0~raspbian");
  });

  it("defaults to the seed's versions", () => {
    const v = checkVersions(seedVersions());
    expect(v).toMatchObject({
      HYPRIOT_OS_VERSION: "v2.0.1",
      RAW_IMAGE: "rpi-raw.img",
      RAW_IMAGE_VERSION: "v0.2.2",
      KERNEL_BUILD: "20180422-141901",
      DOCKER_COMPOSE_VERSION: "1.22.0",
      DOCKER_MACHINE_VERSION: "0.15.0",
      DOCKER_CE_CHANNEL: "stable",
    });
  });

  it("makes a new VERSION for every build", () => {
    const a = defaultImageVersion(new Date(Date.UTC(2024, 0, 2, 3, 4, 5)));
    const b = defaultImageVersion(new Date(Date.UTC(2024, 0, 2, 3, 4, 6)));
    expect(a).toBe("k8slab-20240102-030405");
    expect(a).not.toBe(b);
  });

  const hostile: [string, string][] = [
    ["HYPRIOT_OS_VERSION", "v2.0.1$(touch /tmp/pwned)"],
    ["HYPRIOT_OS_VERSION", "v2.0.1`id`"],
    ["DOCKER_CE_VERSION", "18.06.1'; rm -rf / #"],
    ["DOCKER_CE_VERSION", '18.06.1"x'],
    ["DOCKER_COMPOSE_VERSION", "1.22.0\nexport PATH=/evil"],
    ["KERNEL_BUILD", "20180422-141901 && id"],
    ["RAW_IMAGE", "../rpi-raw.img"],
    ["VERSION", "x y"],
    ["VERSION", "$(id)"],
    ["KERNEL_URL", "http://10.0.2.2/k.deb?$(id)"],
    ["KERNEL_URL", "http://10.0.2.2/`id`.deb"],
    ["ROOTFS_TAR_CHECKSUM", "d1e7e6d48a25b4a206c5df99ecb8815388ec6945e4f97e78413d5a80778d413"],
    ["RAW_IMAGE_CHECKSUM", "zz".repeat(32)],
  ];
  it.each(hostile)("rejects %s = %j", (key, value) => {
    expect(() => checkVersions({ ...seedVersions(), [key]: value })).toThrow(K8slabError);
    try {
      checkVersions({ ...seedVersions(), [key]: value });
    } catch (error) {
      expect((error as K8slabError).message).toContain(key);
      expect((error as K8slabError).exitCode).toBe(2);
    }
  });

  it("rejects a KERNEL_URL the VM cannot reach or that is not a .deb over http(s)", () => {
    for (const url of [
      "http://localhost:8081/k.deb",
      "http://127.0.0.1:8081/k.deb",
      "http://127.1.2.3/k.deb",
      "ftp://10.0.2.2/k.deb",
      "http://10.0.2.2/kernel.tar.gz",
    ]) {
      expect(() => checkVersions({ ...seedVersions(), KERNEL_URL: url }), url).toThrow(
        /KERNEL_URL/,
      );
    }
    expect(
      checkVersions({
        ...seedVersions(),
        KERNEL_URL: "https://example.org/a/raspberrypi-kernel_1_armhf.deb",
      }).KERNEL_URL,
    ).toBe("https://example.org/a/raspberrypi-kernel_1_armhf.deb");
  });

  it("requires KERNEL_BUILD or KERNEL_URL", () => {
    const rest = seedVersions();
    delete rest.KERNEL_BUILD;
    expect(() => checkVersions(rest)).toThrow(/KERNEL_BUILD .* or KERNEL_URL/);
  });
});

describe("--config FILE", () => {
  it("takes the file's values over the seed's", async () => {
    const dir = await tmp();
    await writeFile(
      join(dir, "v.yaml"),
      "KERNEL_BUILD: 20181007-162516\nKERNEL_VERSION: 4.14.70\n",
    );
    const v = await loadVersionsFile("v.yaml", dir);
    expect(v.KERNEL_BUILD).toBe("20181007-162516");
    expect(v.KERNEL_VERSION).toBe("4.14.70");
    expect(v.HYPRIOT_OS_VERSION).toBe("v2.0.1");
  });

  it("names each bad value with its file, line, column and key", async () => {
    const dir = await tmp();
    await writeFile(
      join(dir, "v.yaml"),
      [
        "HYPRIOT_OS_VERSION: v2.0.1",
        "ROOTFS_TAR_CHECKSUM: abc",
        'DOCKER_CE_VERSION: "18.06.1$(reboot)"',
        "DOCKER_COMPOSE_VERZION: 1.22.0",
        "",
      ].join("\n"),
    );
    const error = await loadVersionsFile("v.yaml", dir).then(
      () => undefined,
      (e: unknown) => e as K8slabError,
    );
    expect(error).toBeInstanceOf(K8slabError);
    expect(error?.exitCode).toBe(2);
    expect(error?.message).toMatch(
      /v\.yaml:2:\d+ ROOTFS_TAR_CHECKSUM: must be a sha256 checksum: 64 hex digits/,
    );
    expect(error?.message).toMatch(
      /v\.yaml:3:\d+ DOCKER_CE_VERSION: must be a docker-ce package version/,
    );
    expect(error?.message).toMatch(/v\.yaml:4:\d+ DOCKER_COMPOSE_VERZION: unknown key/);
    expect(error?.message).toContain("did you mean DOCKER_COMPOSE_VERSION?");
  });

  it("says when the file is missing", async () => {
    await expect(loadVersionsFile("nope.yaml", await tmp())).rejects.toThrow(
      /cannot read nope\.yaml/,
    );
  });
});
