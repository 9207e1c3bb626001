import { describe, expect, it } from "vitest";
import { createHash } from "node:crypto";
import { connect } from "node:net";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { CommandFailedError, K8slabError } from "../src/errors.js";
import { buildHypriotImage, type BuildHypriotImageOptions } from "../src/hypriot/build-image.js";
import { parseVagrantPort } from "../src/hypriot/builder.js";
import { PreflightError } from "../src/hypriot/preflight.js";
import { cli } from "./helpers/cli.js";
import { createFakeBin, type FakeBin, type FakeProgram } from "./helpers/fake-bin.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();

const IMAGE = "fake sd card image\n";
const IMAGE_SHA = createHash("sha256").update(IMAGE).digest("hex");
const RECORDED = [
  "DOCKER_HOST",
  "VERSION",
  "DOCKER_TLS_VERIFY",
  "DOCKER_CERT_PATH",
  "DOCKER_CONTEXT",
];

/** A Vagrant that forwarded the VM's 2375 to 2376 (auto_correct): k8slab must ask, not assume. */
const PORT_ANSWER = [
  "1700000000,default,metadata,provider,virtualbox",
  "1700000000,default,ui,info,2376",
].join("\n");

function programs(
  overrides: Record<string, FakeProgram | undefined> = {},
): Record<string, FakeProgram> {
  const base: Record<string, FakeProgram> = {
    vagrant: {
      rules: [
        { args: "^--version$", stdout: "Vagrant 2.3.4" },
        { args: "^up$", stdout: "Bringing machine 'default' up with 'virtualbox' provider..." },
        { args: "^port --guest 2375 --machine-readable$", stdout: PORT_ANSWER },
        { args: "^ssh -c ", stdout: "" },
        { args: "^plugin list$", stdout: "vagrant-vbguest (0.31.0, global)" },
      ],
      fallback: { exitCode: 1, stderr: "unexpected vagrant call: {{args}}" },
    },
    VBoxManage: { rules: [{ args: "^--version$", stdout: "6.1.38r153438" }] },
    docker: {
      rules: [
        { args: "^--version$", stdout: "Docker version 20.10.24, build 297e128" },
        { args: "^info --format \\{\\{\\.OperatingSystem\\}\\}$", stdout: "Ubuntu 16.04.5 LTS" },
      ],
      fallback: { exitCode: 1, stderr: "unexpected docker call: {{args}}" },
    },
    make: {
      rules: [
        { args: "^--version$", stdout: "GNU Make 4.3" },
        {
          args: "^sd-image$",
          stdout:
            "+ source /workspace/versions.config\n+ zip hypriotos-rpi-{{env.VERSION}}.img.zip",
          files: {
            "hypriotos-rpi-{{env.VERSION}}.img.zip": IMAGE,
            "hypriotos-rpi-{{env.VERSION}}.img.zip.sha256": `${IMAGE_SHA}  hypriotos-rpi-{{env.VERSION}}.img.zip`,
          },
        },
      ],
      fallback: { exitCode: 2, stderr: "make: unexpected target {{args}}" },
    },
    git: {
      rules: [
        { args: "^--version$", stdout: "git version 2.39.2" },
        {
          args: "clone .* https://github.com/hypriot/image-builder-rpi ",
          files: {
            "image-builder-rpi/Makefile": "sd-image:\n",
            "image-builder-rpi/Vagrantfile": "Vagrant.configure(2) {}\n",
            "image-builder-rpi/versions.config": 'HYPRIOT_OS_VERSION="v2.2.1"\n',
          },
        },
      ],
    },
  };
  for (const [name, p] of Object.entries(overrides)) {
    if (p === undefined) delete base[name];
    else base[name] = p;
  }
  return base;
}

interface Setup {
  root: string;
  builder: string;
  fake: FakeBin;
  options: BuildHypriotImageOptions;
  progress: string[];
}

async function setup(overrides: Record<string, FakeProgram | undefined> = {}): Promise<Setup> {
  const root = await tmp();
  const builder = join(root, "image-builder-rpi");
  await mkdir(builder);
  await writeFile(join(builder, "Makefile"), "sd-image:\n");
  await writeFile(join(builder, "Vagrantfile"), "Vagrant.configure(2) {}\n");
  await writeFile(join(builder, "versions.config"), 'HYPRIOT_OS_VERSION="v2.2.1"\n');
  const fake = await createFakeBin(root, programs(overrides), { recordEnv: RECORDED });
  const progress: string[] = [];
  const options: BuildHypriotImageOptions = {
    cwd: root,
    // A user's shell pointing docker elsewhere must not leak into the build.
    env: fake.env({ HOME: root, DOCKER_TLS_VERIFY: "1", DOCKER_CERT_PATH: "/nowhere" }),
    builderDir: builder,
    imageVersion: "k8slab-test-1",
    onProgress: (l) => progress.push(l),
    freeBytes: async () => 100 * 1024 ** 3,
    dockerInfoAttempts: 2,
    dockerInfoDelayMs: 10,
  };
  return { root, builder, fake, options, progress };
}

async function failure(p: Promise<unknown>): Promise<K8slabError> {
  try {
    await p;
  } catch (error) {
    if (error instanceof K8slabError) return error;
    throw error;
  }
  throw new Error("expected the build to fail");
}

function without<T extends object, K extends keyof T>(value: T, key: K): Omit<T, K> {
  const copy = { ...value };
  delete copy[key];
  return copy;
}

/** The calls that do work (not the preflight's --version probes). */
async function workCalls(fake: FakeBin) {
  return (await fake.calls()).filter(
    (c) => c.args[0] !== "--version" && c.args.join(" ") !== "plugin list",
  );
}

async function refused(port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = connect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      done(false);
    });
    socket.once("error", (e: NodeJS.ErrnoException) => done(e.code === "ECONNREFUSED"));
  });
}

describe("build-hypriot-image with fake vagrant, docker and make", () => {
  it("runs vagrant up, vagrant port, docker info, make sd-image in order, with DOCKER_HOST from vagrant port", async () => {
    const s = await setup();
    const result = await buildHypriotImage(s.options);

    const calls = await workCalls(s.fake);
    expect(calls.map((c) => [c.program, ...c.args].join(" "))).toEqual([
      "vagrant up",
      "vagrant port --guest 2375 --machine-readable",
      "docker info --format {{.OperatingSystem}}",
      "make sd-image",
    ]);
    for (const c of calls) expect(c.cwd).toBe(s.builder);
    const docker = calls.find((c) => c.program === "docker")!;
    const make = calls.find((c) => c.program === "make")!;
    for (const c of [docker, make]) {
      expect(c.env.DOCKER_HOST).toBe("tcp://127.0.0.1:2376");
      expect(c.env.DOCKER_TLS_VERIFY).toBeNull();
      expect(c.env.DOCKER_CERT_PATH).toBeNull();
    }
    expect(make.env.VERSION).toBe("k8slab-test-1");
    // vagrant runs with the user's environment (its DOCKER_* are none of its business).
    expect(calls[0]!.env.DOCKER_HOST).toBeNull();

    expect(result.image).toBe(join(s.builder, "hypriotos-rpi-k8slab-test-1.img.zip"));
    expect(result.sha256).toBe(IMAGE_SHA);
    expect(result.dockerHost).toBe("tcp://127.0.0.1:2376");
    expect(result.dockerOs).toBe("Ubuntu 16.04.5 LTS");
    expect(result.versions.VERSION).toBe("k8slab-test-1");
    expect(result.versions.HYPRIOT_OS_VERSION).toBe("v2.0.1");

    const config = await readFile(join(s.builder, "versions.config"), "utf8");
    expect(config).toContain("VERSION='k8slab-test-1'");
    expect(config).toContain("export DOCKER_CE_VERSION='18.06.1~ce~3-0~raspbian'");
    expect(await readFile(join(s.builder, "versions.config.orig"), "utf8")).toBe(
      'HYPRIOT_OS_VERSION="v2.2.1"\n',
    );

    const log = await readFile(result.logFile, "utf8");
    expect(log).toContain("+ zip hypriotos-rpi-k8slab-test-1.img.zip");
    expect(log).toContain("make sd-image");
    expect(s.progress.join("\n")).toMatch(/\[make sd-image\]/);
    expect(s.progress.join("\n")).toContain("tcp://127.0.0.1:2376");
  });

  it("gives every build a new VERSION by default", async () => {
    const s = await setup();
    const options = without(s.options, "imageVersion");
    let t = Date.UTC(2024, 0, 2, 3, 4, 5);
    const now = () => new Date((t += 1000));
    const a = await buildHypriotImage({ ...options, now });
    const b = await buildHypriotImage({ ...options, now });
    expect(a.versions.VERSION).toMatch(/^k8slab-\d{8}-\d{6}$/);
    expect(b.versions.VERSION).not.toBe(a.versions.VERSION);
    const makes = await s.fake.callsOf("make");
    expect(makes.filter((c) => c.args[0] === "sd-image").map((c) => c.env.VERSION)).toEqual([
      a.versions.VERSION,
      b.versions.VERSION,
    ]);
  });

  it("never runs make test or make shellcheck (they need a terminal)", async () => {
    const s = await setup();
    await buildHypriotImage(s.options);
    const targets = (await s.fake.callsOf("make")).flatMap((c) => c.args);
    expect(targets).not.toContain("test");
    expect(targets).not.toContain("shellcheck");
  });

  it("refuses an image whose sha256 does not match the builder's .sha256 file", async () => {
    const s = await setup({
      make: {
        rules: [
          { args: "^--version$", stdout: "GNU Make 4.3" },
          {
            args: "^sd-image$",
            files: {
              "hypriotos-rpi-{{env.VERSION}}.img.zip": IMAGE,
              "hypriotos-rpi-{{env.VERSION}}.img.zip.sha256": `${"0".repeat(64)}  hypriotos-rpi-{{env.VERSION}}.img.zip`,
            },
          },
        ],
      },
    });
    await expect(buildHypriotImage(s.options)).rejects.toThrow(
      /has sha256 [0-9a-f]{64}, but .*\.sha256 says 0{64}/,
    );
  });

  it("stops when DOCKER_HOST reaches a Docker that is not the builder VM", async () => {
    const s = await setup({
      docker: {
        rules: [
          { args: "^--version$", stdout: "Docker version 24" },
          { args: "^info", stdout: "Docker Desktop" },
        ],
      },
    });
    const error = await failure(buildHypriotImage(s.options));
    expect(error).toBeInstanceOf(K8slabError);
    expect(error.message).toMatch(/Docker Desktop.*not the builder VM's Ubuntu/);
    expect((await s.fake.callsOf("make")).some((c) => c.args[0] === "sd-image")).toBe(false);
  });

  it("stops with a hint when vagrant port does not answer a port", async () => {
    const s = await setup({
      vagrant: {
        rules: [
          { args: "^--version$", stdout: "Vagrant 2.3.4" },
          { args: "^up$" },
          {
            args: "^port",
            stdout:
              "1700000000,default,ui,info,The forwarded ports for the machine are listed below.",
          },
        ],
      },
    });
    const error = await failure(buildHypriotImage(s.options));
    expect(error.message).toMatch(/did not say where guest port 2375 is forwarded/);
    expect(error.hint).toMatch(/vagrant port/);
  });

  it("passes on a failing make with its exit code and the tail of its output", async () => {
    const s = await setup({
      make: {
        rules: [
          { args: "^--version$", stdout: "GNU Make 4.3" },
          {
            args: "^sd-image$",
            stderr: "sha256sum: WARNING: 1 computed checksum did NOT match",
            exitCode: 2,
          },
        ],
      },
    });
    const error = await buildHypriotImage(s.options).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CommandFailedError);
    expect((error as CommandFailedError).message).toMatch(/make sd-image exited with code 2/);
    expect((error as CommandFailedError).message).toContain("did NOT match");
  });

  it("parses the forwarded port in every shape vagrant prints it", () => {
    expect(parseVagrantPort(PORT_ANSWER)).toBe(2376);
    expect(parseVagrantPort("2200\n")).toBe(2200);
    expect(
      parseVagrantPort("1,default,forwarded_port,2375,2380\n1,default,forwarded_port,22,2222"),
    ).toBe(2380);
    expect(parseVagrantPort("1,default,ui,info,not a port")).toBeUndefined();
    expect(parseVagrantPort("")).toBeUndefined();
  });
});

describe("build-hypriot-image --kernel-deb", () => {
  it("serves the kernel to the VM, puts its URL into versions.config, checks it from the VM, and stops the server", async () => {
    const s = await setup();
    const deb = join(s.root, "raspberrypi-kernel_20181007-162516_armhf.deb");
    await writeFile(deb, "kernel");
    let port = 0;
    const result = await buildHypriotImage({
      ...s.options,
      kernelDeb: deb,
      kernelPort: 0,
      kernelBind: "127.0.0.1",
      onProgress: (l) => {
        s.progress.push(l);
        const m = /listening on 127\.0\.0\.1:(\d+)/.exec(l);
        if (m) port = Number(m[1]);
      },
    });
    expect(port).toBeGreaterThan(0);
    const url = `http://10.0.2.2:${port}/raspberrypi-kernel_20181007-162516_armhf.deb`;
    expect(result.versions.KERNEL_URL).toBe(url);
    expect(await readFile(join(s.builder, "versions.config"), "utf8")).toContain(
      `export KERNEL_URL='${url}'`,
    );
    const ssh = (await s.fake.callsOf("vagrant")).find((c) => c.args[0] === "ssh");
    expect(ssh?.args).toEqual(["ssh", "-c", `curl -fsSI --max-time 30 -o /dev/null '${url}'`]);
    expect(await refused(port)).toBe(true);
    expect(s.progress).toContain("kernel: server stopped");
  });

  it("stops the server when the build fails", async () => {
    const s = await setup({
      make: {
        rules: [
          { args: "^--version$", stdout: "GNU Make 4.3" },
          { args: "^sd-image$", exitCode: 1 },
        ],
      },
    });
    const deb = join(s.root, "k.deb");
    await writeFile(deb, "kernel");
    let port = 0;
    await expect(
      buildHypriotImage({
        ...s.options,
        kernelDeb: deb,
        kernelPort: 0,
        kernelBind: "127.0.0.1",
        onProgress: (l) => {
          const m = /listening on 127\.0\.0\.1:(\d+)/.exec(l);
          if (m) port = Number(m[1]);
        },
      }),
    ).rejects.toThrow(/make sd-image exited with code 1/);
    expect(port).toBeGreaterThan(0);
    expect(await refused(port)).toBe(true);
  });

  it("stops the server and says so when the build is interrupted (Ctrl-C)", async () => {
    const s = await setup({
      make: {
        rules: [
          { args: "^--version$", stdout: "GNU Make 4.3" },
          { args: "^sd-image$", sleepMs: 20_000 },
        ],
      },
    });
    const deb = join(s.root, "k.deb");
    await writeFile(deb, "kernel");
    const controller = new AbortController();
    let port = 0;
    const started = Date.now();
    const error = await failure(
      buildHypriotImage({
        ...s.options,
        kernelDeb: deb,
        kernelPort: 0,
        kernelBind: "127.0.0.1",
        signal: controller.signal,
        onProgress: (l) => {
          const m = /listening on 127\.0\.0\.1:(\d+)/.exec(l);
          if (m) port = Number(m[1]);
          if (l.startsWith("[make sd-image]")) setTimeout(() => controller.abort(), 200);
        },
      }),
    );
    expect(error.message).toBe("the build was interrupted");
    expect(error.hint).toMatch(/vagrant halt/);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(await refused(port)).toBe(true);
  });

  it("says so when the VM cannot reach the kernel server", async () => {
    const s = await setup({
      vagrant: {
        rules: [
          { args: "^--version$", stdout: "Vagrant 2.3.4" },
          { args: "^up$" },
          { args: "^port", stdout: PORT_ANSWER },
          { args: "^ssh", exitCode: 7, stderr: "curl: (7) Failed to connect" },
        ],
      },
    });
    const deb = join(s.root, "k.deb");
    await writeFile(deb, "kernel");
    const error = await failure(
      buildHypriotImage({
        ...s.options,
        kernelDeb: deb,
        kernelPort: 0,
        kernelBind: "127.0.0.1",
      }),
    );
    expect(error.message).toMatch(
      /the builder VM cannot download http:\/\/10\.0\.2\.2:\d+\/k\.deb/,
    );
    expect(error.hint).toMatch(/--kernel-host/);
  });
});

describe("build-hypriot-image preflight", () => {
  async function failures(s: Setup, extra: Partial<BuildHypriotImageOptions> = {}) {
    const error = await buildHypriotImage({ ...s.options, ...extra }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PreflightError);
    return error as PreflightError;
  }

  it("names a missing docker CLI, with a hint, and runs nothing", async () => {
    const s = await setup({ docker: undefined });
    const error = await failures(s);
    expect(error.failures.map((f) => f.check)).toEqual(["docker"]);
    expect(error.message).toMatch(/docker: docker is not on PATH/);
    expect(error.hint).toMatch(/Docker CLI/);
    expect(await workCalls(s.fake)).toEqual([]);
  });

  it("names a missing vagrant and a missing provider", async () => {
    const s1 = await setup({ vagrant: undefined });
    expect((await failures(s1)).message).toMatch(
      /vagrant: vagrant is not on PATH\n\s+hint: install Vagrant/,
    );
    const s2 = await setup({ VBoxManage: undefined });
    const e2 = await failures(s2);
    expect(e2.failures.map((f) => f.check)).toEqual(["provider"]);
    expect(e2.message).toMatch(/neither VirtualBox \(VBoxManage\) nor the vagrant-libvirt plugin/);
  });

  it("accepts vagrant-libvirt instead of VirtualBox", async () => {
    const s = await setup({
      VBoxManage: undefined,
      vagrant: {
        rules: [
          ...(programs().vagrant!.rules ?? []).filter((r) => r.args !== "^plugin list$"),
          { args: "^plugin list$", stdout: "vagrant-libvirt (0.11.2, system)" },
        ],
      },
    });
    await expect(buildHypriotImage(s.options)).resolves.toMatchObject({ sha256: IMAGE_SHA });
  });

  it("reports too little disk space", async () => {
    const s = await setup();
    const error = await failures(s, { freeBytes: async () => 2 * 1024 ** 3 });
    expect(error.message).toMatch(/disk space: 2\.0 GiB free .* needs about 8\.0 GiB/);
  });

  it("reports every problem at once", async () => {
    const s = await setup({ docker: undefined, make: undefined });
    const error = await failures(s, { freeBytes: async () => 0 });
    expect(error.failures.map((f) => f.check)).toEqual(["docker", "make", "disk space"]);
  });

  it("refuses a builder path with a space before running anything", async () => {
    const s = await setup();
    const spaced = join(s.root, "my builds", "image-builder-rpi");
    await mkdir(spaced, { recursive: true });
    await writeFile(join(spaced, "Makefile"), "");
    await writeFile(join(spaced, "Vagrantfile"), "");
    const error = await failures(s, { builderDir: spaced });
    expect(error.message).toMatch(/contains a space/);
    expect(error.hint).toMatch(/--builder-dir/);
    expect(await s.fake.calls()).toEqual([]);
  });

  it("refuses a localhost KERNEL_URL from --config before running anything", async () => {
    const s = await setup();
    await writeFile(
      join(s.root, "v.yaml"),
      "KERNEL_URL: http://localhost:8081/raspberrypi-kernel_1_armhf.deb\n",
    );
    const error = await failure(buildHypriotImage({ ...s.options, config: "v.yaml" }));
    expect(error.message).toMatch(/v\.yaml:1:\d+ KERNEL_URL: points at localhost/);
    expect(await s.fake.calls()).toEqual([]);
  });

  it("refuses a --kernel-host that is the VM itself", async () => {
    const s = await setup();
    const deb = join(s.root, "k.deb");
    await writeFile(deb, "kernel");
    const error = await failure(
      buildHypriotImage({ ...s.options, kernelDeb: deb, kernelHost: "127.0.0.1" }),
    );
    expect(error.message).toMatch(/--kernel-host 127\.0\.0\.1 is the VM itself/);
    expect(error.hint).toMatch(/10\.0\.2\.2/);
    expect(await s.fake.calls()).toEqual([]);
  });

  it("refuses a --builder-dir that is not an image-builder-rpi checkout", async () => {
    const s = await setup();
    const error = await failure(buildHypriotImage({ ...s.options, builderDir: s.root }));
    expect(error.message).toMatch(/is not an image-builder-rpi checkout/);
  });
});

describe("build-hypriot-image without --builder-dir", () => {
  it("clones image-builder-rpi at the pinned ref into the cache dir, then builds there", async () => {
    const s = await setup();
    const cache = join(s.root, "cache");
    const options = without(s.options, "builderDir");
    const result = await buildHypriotImage({
      ...options,
      env: { ...options.env, XDG_CACHE_HOME: cache },
    });
    const dir = join(cache, "k8slab", "image-builder-rpi");
    expect(result.builderDir).toBe(dir);
    const calls = await workCalls(s.fake);
    expect(calls[0]).toMatchObject({
      program: "git",
      cwd: join(cache, "k8slab"),
      args: [
        "-c",
        "advice.detachedHead=false",
        "clone",
        "--depth",
        "1",
        "--branch",
        "v1.9.0",
        "https://github.com/hypriot/image-builder-rpi",
        dir,
      ],
    });
    expect(calls.slice(1).every((c) => c.cwd === dir)).toBe(true);
    // A second build reuses the checkout.
    await buildHypriotImage({ ...options, env: { ...options.env, XDG_CACHE_HOME: cache } });
    expect((await s.fake.callsOf("git")).filter((c) => c.args.includes("clone"))).toHaveLength(1);
  });
});

/** The command through the real CLI entry (main.ts), in-process. */
function runBuildCommand(args: string[], cwd: string, env: NodeJS.ProcessEnv) {
  return cli(["build-hypriot-image", ...args], { cwd, env });
}

describe("k8slab build-hypriot-image --dry-run", () => {
  it("writes versions.config and prints every command in order with its environment, running nothing", async () => {
    const s = await setup();
    const deb = join(s.root, "raspberrypi-kernel_20181007-162516_armhf.deb");
    await writeFile(deb, "kernel");
    const r = await runBuildCommand(
      ["--builder-dir", s.builder, "--image-version", "v-dry", "--kernel-deb", deb, "--dry-run"],
      s.root,
      s.options.env,
    );
    expect(r.code, r.stderr).toBe(0);
    expect(await s.fake.calls()).toEqual([]);
    const lines = r.stdout.split("\n");
    const commands = lines
      .filter((l) => /^ {5}cd /.test(l))
      .map((l) => l.replace(/^ {5}cd \S+ && /, ""));
    expect(commands).toEqual([
      "vagrant up",
      "vagrant port --guest 2375 --machine-readable",
      "vagrant ssh -c 'curl -fsSI --max-time 30 -o /dev/null '\\''http://10.0.2.2:8081/raspberrypi-kernel_20181007-162516_armhf.deb'\\'''",
      "env -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH -u DOCKER_CONTEXT DOCKER_HOST='tcp://127.0.0.1:<port from vagrant port>' docker info --format '{{.OperatingSystem}}'",
      "env -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH -u DOCKER_CONTEXT DOCKER_HOST='tcp://127.0.0.1:<port from vagrant port>' VERSION=v-dry make sd-image",
    ]);
    expect(r.stderr).toContain("dry run: nothing was run");
    const config = await readFile(join(s.builder, "versions.config"), "utf8");
    expect(config).toContain(
      "export KERNEL_URL='http://10.0.2.2:8081/raspberrypi-kernel_20181007-162516_armhf.deb'",
    );
    expect(config).toContain("VERSION='v-dry'");
    const { stdout } = await execa("bash", [
      "-uc",
      'source "$1"; printf %s "$KERNEL_URL"',
      "bash",
      join(s.builder, "versions.config"),
    ]);
    expect(stdout).toBe("http://10.0.2.2:8081/raspberrypi-kernel_20181007-162516_armhf.deb");
  });

  it("prints the plan as JSON with --json", async () => {
    const s = await setup();
    const r = await runBuildCommand(
      ["--builder-dir", s.builder, "--dry-run", "--json"],
      s.root,
      s.options.env,
    );
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as {
      dryRun: boolean;
      plan: { file: string; args: string[]; env: Record<string, string>; unsetEnv: string[] }[];
      versions: { VERSION: string };
    };
    expect(out.dryRun).toBe(true);
    expect(out.versions.VERSION).toMatch(/^k8slab-\d{8}-\d{6}$/);
    expect(out.plan.map((p) => [p.file, ...p.args].join(" "))).toEqual([
      "vagrant up",
      "vagrant port --guest 2375 --machine-readable",
      "docker info --format {{.OperatingSystem}}",
      "make sd-image",
    ]);
    expect(out.plan[3]!.unsetEnv).toContain("DOCKER_TLS_VERIFY");
    expect(out.plan[3]!.env).toMatchObject({ VERSION: out.versions.VERSION });
    expect(await s.fake.calls()).toEqual([]);
  });

  it("exits 2 with file:line for a bad --config", async () => {
    const s = await setup();
    await writeFile(
      join(s.root, "versions.yaml"),
      "HYPRIOT_OS_VERSION: v2.0.1\nRAW_IMAGE_CHECKSUM: '`reboot`'\n",
    );
    const r = await runBuildCommand(
      ["--builder-dir", s.builder, "--config", "versions.yaml", "--dry-run"],
      s.root,
      s.options.env,
    );
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/versions\.yaml:2:\d+ RAW_IMAGE_CHECKSUM: must be a sha256 checksum/);
    expect(await readFile(join(s.builder, "versions.config"), "utf8")).toBe(
      'HYPRIOT_OS_VERSION="v2.2.1"\n',
    );
  });
});
