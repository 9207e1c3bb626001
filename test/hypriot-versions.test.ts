import { beforeAll, describe, expect, it } from "vitest";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { K8slabError } from "../src/errors.js";
import {
  inspectCheckout,
  parseVersionsConfigText,
  VERSION_KEYS,
  type BuilderCheckout,
} from "../src/hypriot/builder-checkout.js";
import {
  checkVersions,
  defaultImageVersion,
  EXPORTED,
  loadVersionsFile,
  renderVersionsConfig,
  versionsProblems,
  type VersionsConfig,
  type VersionValues,
} from "../src/hypriot/versions-config.js";
import { fixtureCheckout, type Generation } from "./fixtures/hypriot/checkout.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();

/** Seed 002's versions, from the built-in --config seed-002. */
let SEED: VersionValues;
beforeAll(async () => {
  SEED = await loadVersionsFile("seed-002", import.meta.dirname);
});
const seedVersions = (): Record<string, string | undefined> => ({ ...SEED });

const NAMES = VERSION_KEYS;

/** Every key set. */
function full(): VersionsConfig {
  return {
    ...checkVersions({
      ...seedVersions(),
      DOCKER_CE_CHANNEL: "stable",
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
    expect(await exportedToChild(file)).toEqual(NAMES.filter((n) => EXPORTED.includes(n)));
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

  it("--config seed-002 gives the seed's versions (and no Docker channel: v1.9.0 does not read one)", () => {
    expect(SEED).toEqual({
      HYPRIOT_OS_VERSION: "v2.0.1",
      ROOTFS_TAR_CHECKSUM: "d1e7e6d48a25b4a206c5df99ecb8815388ec6945e4f97e78413d5a80778d4137",
      RAW_IMAGE: "rpi-raw.img",
      RAW_IMAGE_VERSION: "v0.2.2",
      RAW_IMAGE_CHECKSUM: "2fbeb13b7b0f2308dbd0d82780b54c33003ad43d145ff08498b25fb8bbe1c2c6",
      KERNEL_BUILD: "20180422-141901",
      KERNEL_VERSION: "4.14.34",
      DOCKER_CE_VERSION: "18.06.1~ce~3-0~raspbian",
      DOCKER_COMPOSE_VERSION: "1.22.0",
      DOCKER_MACHINE_VERSION: "0.15.0",
    });
  });

  it.each([
    ["v1.10.0", "1.20190215-1"],
    ["v1.11.5 and v1.12.0", "1.20190925+1-1"],
    ["up to v1.9.0", "20180422-141901"],
  ])(
    "accepts upstream's own KERNEL_BUILD of %s (%s) and writes it so that bash reads it back",
    async (_tag, build) => {
      const dir = await tmp();
      await writeFile(join(dir, "v.yaml"), `KERNEL_BUILD: "${build}"\n`);
      const v = await loadVersionsFile("v.yaml", dir);
      expect(v.KERNEL_BUILD).toBe(build);
      const file = join(dir, "versions.config");
      await writeFile(
        file,
        renderVersionsConfig({ ...checkVersions({ ...SEED, ...v }), VERSION: "x" }),
      );
      expect((await sourced(file)).KERNEL_BUILD).toBe(build);
    },
  );

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
});

describe("--config FILE", () => {
  it("holds only the keys the file sets (the checkout's own values fill in the rest)", async () => {
    const dir = await tmp();
    await writeFile(
      join(dir, "v.yaml"),
      "KERNEL_BUILD: 20181007-162516\nKERNEL_VERSION: 4.14.70\n",
    );
    expect(await loadVersionsFile("v.yaml", dir)).toEqual({
      KERNEL_BUILD: "20181007-162516",
      KERNEL_VERSION: "4.14.70",
    });
  });

  it("says which built-in files exist for an unknown name", async () => {
    await expect(loadVersionsFile("seed-003", await tmp())).rejects.toThrow(
      /no versions file seed-003/,
    );
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

describe("the checkout's generation (fixture checkouts in the shape of v1.9.0 and master)", () => {
  const inspect = async (generation: Generation) =>
    inspectCheckout(await fixtureCheckout(join(await tmp(), "image-builder-rpi"), generation));
  const v190 = () => inspect("v1.9.0");
  const master = () => inspect("master");
  const own = (c: BuilderCheckout): VersionsConfig => ({
    ...checkVersions(c.values),
    VERSION: "k8slab-1",
  });
  const lines = (c: BuilderCheckout, v: VersionsConfig) =>
    versionsProblems(v, c).map((p) => `${p.severity} ${p.path}: ${p.message}`);

  it("v1.9.0: stretch, the kernel pinned by KERNEL_BUILD, Docker's channel fixed to edge, dhcpcd", async () => {
    const c = await v190();
    expect(c).toMatchObject({
      distribution: "stretch",
      dockerDistribution: "stretch",
      fixedDockerChannel: "edge",
      kernel: "pinned",
      network: "dhcpcd",
    });
    expect(c.reads).toContain("KERNEL_BUILD");
    expect(c.reads).not.toContain("DOCKER_CE_CHANNEL");
    expect(c.reads).not.toContain("KERNEL_VERSION");
    expect(c.values).toMatchObject({
      HYPRIOT_OS_VERSION: "v2.0.1",
      KERNEL_BUILD: "20180422-141901",
      DOCKER_CE_VERSION: "18.04.0~ce~3-0~raspbian",
    });
  });

  it("master: buster, the newest kernel (KERNEL_BUILD unread), DOCKER_CE_CHANNEL read, network-config", async () => {
    const c = await master();
    expect(c).toMatchObject({
      distribution: "buster",
      dockerDistribution: "buster",
      kernel: "newest",
      network: "network-config",
    });
    expect(c.fixedDockerChannel).toBeUndefined();
    expect(c.reads).toContain("DOCKER_CE_CHANNEL");
    expect(c.reads).not.toContain("KERNEL_BUILD");
    expect(c.values).toMatchObject({
      HYPRIOT_OS_VERSION: "v2.2.1",
      DOCKER_CE_CHANNEL: "stable",
      DOCKER_CE_VERSION: "5:19.03.12~3-0~raspbian-buster",
    });
    expect(c.values.KERNEL_BUILD).toBeUndefined();
  });

  it("each checkout's own values build; only v1.9.0's KERNEL_VERSION is read by no script", async () => {
    const a = await v190();
    expect(lines(a, own(a))).toEqual([
      "warning KERNEL_VERSION: KERNEL_VERSION=4.14.34 has no effect: neither builder/build.sh nor builder/chroot-script.sh of this checkout reads it",
    ]);
    const b = await master();
    expect(lines(b, own(b))).toEqual([]);
  });

  it("the seed's v1.9.0-era values on master: a stretch root file system is an error, every unread value a warning", async () => {
    const c = await master();
    const got = lines(c, { ...checkVersions({ ...c.values, ...SEED }), VERSION: "k8slab-1" });
    expect(got).toEqual([
      expect.stringMatching(/^warning KERNEL_BUILD: .*never reads KERNEL_BUILD/),
      expect.stringMatching(/^warning KERNEL_VERSION: /),
      "error HYPRIOT_OS_VERSION: v2.0.1 is a stretch root file system, but this checkout installs packages for buster",
      expect.stringMatching(
        /^warning DOCKER_CE_VERSION: 18\.06\.1~ce~3-0~raspbian names no distribution, but the packages of raspbian buster do/,
      ),
    ]);
  });

  it("DOCKER_CE_CHANNEL on v1.9.0 has no effect: its chroot script hard-codes edge", async () => {
    const c = await v190();
    expect(lines(c, { ...own(c), DOCKER_CE_CHANNEL: "stable" })).toContain(
      "warning DOCKER_CE_CHANNEL: DOCKER_CE_CHANNEL=stable has no effect: this checkout installs Docker from the edge channel, hard-coded in builder/chroot-script.sh",
    );
  });

  it("refuses a docker-ce package of another distribution, and a variable the checkout reads but nobody set", async () => {
    const c = await master();
    const v = own(c);
    delete v.DOCKER_CE_CHANNEL;
    expect(
      lines(c, { ...v, DOCKER_CE_VERSION: "5:19.03.0~3-0~raspbian-stretch" }).filter((l) =>
        l.startsWith("error"),
      ),
    ).toEqual([
      "error DOCKER_CE_CHANNEL: this checkout reads DOCKER_CE_CHANNEL, but it has no value",
      "error DOCKER_CE_VERSION: 5:19.03.0~3-0~raspbian-stretch is a package for stretch, but this checkout installs Docker from raspbian buster",
    ]);
  });

  it("a pinned-kernel checkout needs KERNEL_BUILD or KERNEL_URL", async () => {
    const c = await v190();
    const v = own(c);
    delete v.KERNEL_BUILD;
    expect(lines(c, v).filter((l) => l.startsWith("error"))).toEqual([
      expect.stringMatching(/^error KERNEL_BUILD: .*set one of them/),
    ]);
    expect(
      lines(c, { ...v, KERNEL_URL: "http://10.0.2.2:8081/k.deb" }).filter((l) =>
        l.startsWith("error"),
      ),
    ).toEqual([]);
  });

  it("reads versions.config without running it, and refuses what it cannot rewrite", () => {
    expect(
      parseVersionsConfigText(
        [
          "# comment",
          'HYPRIOT_OS_VERSION="v2.2.1"',
          'export DOCKER_CE_CHANNEL="stable" # stable, test or edge',
          "RAW_IMAGE='rpi-raw.img'",
          "export DOCKER_COMPOSE_VERSION=1.26.1",
          "",
        ].join("\n"),
      ),
    ).toEqual({
      HYPRIOT_OS_VERSION: "v2.2.1",
      DOCKER_CE_CHANNEL: "stable",
      RAW_IMAGE: "rpi-raw.img",
      DOCKER_COMPOSE_VERSION: "1.26.1",
    });
    expect(() => parseVersionsConfigText('HYPRIOT_OS_VERSION="$(curl x)"')).toThrow(
      /versions\.config:1: k8slab cannot read this line/,
    );
    expect(() => parseVersionsConfigText("source other.config")).toThrow(/cannot read/);
    expect(() => parseVersionsConfigText('DEVICE_INIT_VERSION="0.1.1"')).toThrow(
      /DEVICE_INIT_VERSION is not a versions\.config variable k8slab knows/,
    );
  });
});
