/**
 * `k8slab cache export` and `cache import` through the real CLI, run as a process: a lab's
 * artifacts come from an HTTP server on 127.0.0.1, its images from a real registry
 * (test/helpers/registry.ts, TLS and token authentication, in a network namespace of the test)
 * into cache A; the bundle of cache A, with a tiny hand-made Vagrant box, is then imported with
 * the registry destroyed and the server closed into empty caches and an empty Vagrant (real
 * `vagrant box add` and `vagrant box list`). Damaged, truncated, hostile and conflicting bundles,
 * an export from a cache that lacks something and an interrupted export leave nothing behind.
 */
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, open, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { gzipSync } from "node:zlib";
import { execa } from "execa";
import { pack as tarPack } from "tar-stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cliArgv } from "./helpers/cli-process.js";
import { findTool, hostPath } from "./helpers/host.js";
import { editedLab, OFFLINE } from "./helpers/labs.js";
import { netnsSupport } from "./helpers/netns.js";
import { OciLayout, tarOf } from "./helpers/registry-images.js";
import { skopeoAuth, startTestRegistry, type TestRegistry } from "./helpers/registry.js";
import { useTmpDirs } from "./helpers/tmp.js";
import { closeUpstream, startUpstream, type Upstream } from "./helpers/upstream.js";

const support = netnsSupport();
const vagrant = await findTool("vagrant");
const why = !support.ok
  ? support.reason
  : !vagrant
    ? "vagrant is not installed"
    : !(await findTool("tar"))
      ? "tar is not installed"
      : undefined;

const LAB_NAME = "bundle-lab";
const BOX = "k8slab/tiny";
const BOX_VERSION = "0.1.0";
/** Each CLI run; tsx compiles the CLI on start, on a loaded 2-core machine. */
const CLI_TIMEOUT_MS = 180_000;
const PAUSE = "gcr.io/google_containers/pause-amd64:3.1";
const BIG_BYTES = 320 * 1024 * 1024;

const sha = (b: Buffer | string) => createHash("sha256").update(b).digest("hex");

interface Run {
  code: number | undefined;
  stdout: string;
  stderr: string;
}

const explain = (r: Run) => `exit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;

/** Every file under `dir`, relative, sorted; [] when it does not exist. */
async function filesUnder(dir: string): Promise<string[]> {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  const walk = async (d: string, rel: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(join(d, e.name), r);
      else out.push(r);
    }
  };
  await walk(dir, "");
  return out.sort();
}

/** Every entry (file or directory) anywhere under `dir` whose name starts with `prefix`. */
async function namedUnder(dir: string, prefix: string): Promise<string[]> {
  if (!existsSync(dir)) return [];
  const all = await readdir(dir, { recursive: true });
  return all.filter((p) => p.split("/").some((part) => part.startsWith(prefix)));
}

interface TarEntry {
  name: string;
  type: string;
  /** Where its data starts in the tar. */
  offset: number;
  size: number;
}

/** The entries of a tar, read from its ustar headers (with a pax `path` where there is one). */
function tarEntries(tar: Buffer): TarEntry[] {
  const entries: TarEntry[] = [];
  let pos = 0;
  let paxPath: string | undefined;
  const field = (h: Buffer, from: number, to: number) => {
    const raw = h.subarray(from, to).toString("utf8");
    const nul = raw.indexOf("\0");
    return nul === -1 ? raw : raw.slice(0, nul);
  };
  while (pos + 512 <= tar.length) {
    const header = tar.subarray(pos, pos + 512);
    if (header.every((b) => b === 0)) break;
    const size = parseInt(field(header, 124, 136).trim() || "0", 8);
    const type = field(header, 156, 157) || "0";
    const ustar = field(header, 257, 263).startsWith("ustar");
    const prefix = ustar ? field(header, 345, 500) : "";
    const offset = pos + 512;
    if (type === "x") {
      const records = tar.subarray(offset, offset + size).toString("utf8");
      const path = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(records);
      paxPath = path?.[1];
    } else {
      const name =
        paxPath ?? (prefix ? `${prefix}/${field(header, 0, 100)}` : field(header, 0, 100));
      entries.push({ name, type, offset, size });
      paxPath = undefined;
    }
    pos = offset + Math.ceil(size / 512) * 512;
  }
  return entries;
}

interface BundleManifest {
  format: number;
  lab: { name: string; file: string };
  artifacts: { name: string; url: string; file: string; size: number; sha256: string }[];
  images: { ref: string; repoTag: string; digest: string; file: string; sha256: string }[];
  box?: { name: string; version: string; provider: string; file: string; sha256: string };
}

/** The image archives a cache holds, by repoTag, with their records. */
async function cachedArchives(
  cache: string,
): Promise<Map<string, { path: string; digest: string; sha256: string }>> {
  const found = new Map<string, { path: string; digest: string; sha256: string }>();
  for (const file of await filesUnder(join(cache, "images"))) {
    if (!file.endsWith(".tar")) continue;
    const path = join(cache, "images", file);
    const record = JSON.parse(await readFile(`${path}.json`, "utf8")) as {
      repoTag: string;
      digest: string;
      sha256: string;
    };
    found.set(record.repoTag, { path, digest: record.digest, sha256: record.sha256 });
  }
  return found;
}

/** Whether a TCP connection to host:port can be made within `ms`. */
function reachable(host: string, port: number, ms = 5_000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), ms);
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

describe.skipIf(why !== undefined)("k8slab cache export and cache import (real CLI)", () => {
  const tmp = useTmpDirs();
  let work = "";
  let registryRoot = "";
  let registry: TestRegistry | undefined;
  let upstream: Upstream | undefined;
  let labFile = "";
  let labText = "";
  let cacheA = "";
  let vagrantHomeA = "";
  let bundle = "";
  let archive: { url: string; sha256: string; body: Buffer };
  let tool: { url: string; sha256: string; body: Buffer };
  let webRef = "";
  /** Digests as pushed, by destination. */
  const pushed = new Map<string, string>();

  function baseEnv(): Record<string, string> {
    return {
      PATH: hostPath(),
      HOME: join(work, "home"),
      DOCKER_CONFIG: join(work, "docker"),
      NO_COLOR: "1",
      LC_ALL: "C",
      VAGRANT_CHECKPOINT_DISABLE: "1",
    };
  }

  /** The CLI as its own process, with only the environment given (no proxies, no user config). */
  async function k8slab(
    args: string[],
    env: Record<string, string>,
    cwd: string = work,
  ): Promise<Run> {
    const [node, ...rest] = cliArgv();
    const result = await execa(node!, [...rest, ...args], {
      cwd,
      env: { ...baseEnv(), ...env },
      extendEnv: false,
      reject: false,
      stdin: "ignore",
      timeout: CLI_TIMEOUT_MS,
      forceKillAfterDelay: 5_000,
    });
    const run = {
      code: result.exitCode,
      stdout: String(result.stdout),
      stderr: String(result.stderr),
    };
    if (result.timedOut) throw new Error(`k8slab ${args.join(" ")} timed out\n${explain(run)}`);
    return run;
  }

  async function vagrantBoxList(vagrantHome: string): Promise<string> {
    const result = await execa("vagrant", ["box", "list"], {
      cwd: work,
      env: { ...baseEnv(), VAGRANT_HOME: vagrantHome },
      extendEnv: false,
      reject: false,
      stdin: "ignore",
      timeout: 120_000,
      forceKillAfterDelay: 5_000,
    });
    expect(result.exitCode, String(result.stderr)).toBe(0);
    return String(result.stdout);
  }

  /** A Vagrant home with one unpacked libvirt box, as `vagrant box add` leaves it. */
  async function tinyBox(vagrantHome: string): Promise<void> {
    const dir = join(
      vagrantHome,
      "boxes",
      BOX.replace("/", "-VAGRANTSLASH-"),
      BOX_VERSION,
      "libvirt",
    );
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "metadata.json"), JSON.stringify({ provider: "libvirt" }));
    await writeFile(join(dir, "box.img"), randomBytes(256 * 1024));
    await writeFile(join(dir, "Vagrantfile"), 'Vagrant.configure("2") do |config|\nend\n');
  }

  /** The bundle the export test wrote, for a test to damage a copy of. */
  async function bundleBytes(): Promise<Buffer> {
    expect(bundle, "the export test writes the bundle").not.toBe("");
    return readFile(bundle);
  }

  /** The tests' lab: the registry's pause (by the seed's name) and web, app and tool, the box. */
  function bundleLab(
    preload: Record<string, string> = {},
    artifacts: Record<string, object> = {},
  ): string {
    return editedLab("single-node", [
      [["name"], LAB_NAME],
      ...OFFLINE,
      [["images", "build"], ["hyperkube"]],
      [
        ["images", "mirrors"],
        { "gcr.io/google_containers": `${registry!.host}/google_containers` },
      ],
      [["images", "preload"], { web: webRef, ...preload }],
      [["box"], { name: BOX }],
      [["provider"], { name: "libvirt" }],
      [
        ["artifacts"],
        {
          app: {
            url: archive.url,
            sha256: archive.sha256,
            install: { "bin/hyperkube": "hyperkube" },
          },
          tool: { url: tool.url, kind: "binary" },
          ...artifacts,
        },
      ],
    ]);
  }

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), "k8slab-bundle-"));
    await chmod(work, 0o755); // skopeo reads the caches' archives as nobody
    await mkdir(join(work, "home"));
    await mkdir(join(work, "docker"));
    await writeFile(join(work, "docker", "config.json"), "{}");

    registryRoot = await mkdtemp(join(tmpdir(), "k8slab-registry-"));
    registry = await startTestRegistry(registryRoot);
    const layout = new OciLayout(join(registryRoot, "oci"));
    const image = (label: string, architecture = "amd64") =>
      layout.image({
        label,
        architecture,
        layers: [{ "etc/k8slab-test": `${label}\n` }, { "bin/hello": randomBytes(40_000) }],
      });
    const pause = await image("pause");
    const webAmd = await image("web-amd64");
    const webArm = await image("web-arm64", "arm64");
    await layout.tag("pause", pause);
    await layout.tag("web", await layout.index([webArm, webAmd]));
    const push = async (tag: string, dest: string, extra: string[]) => {
      const digestFile = join(registry!.scratch, `digest-${randomBytes(4).toString("hex")}`);
      await registry!.skopeo([
        "copy",
        "--quiet",
        ...extra,
        `--digestfile=${digestFile}`,
        ...skopeoAuth(registry!, "dest-"),
        `oci:${layout.dir}:${tag}`,
        `docker://${registry!.host}/${dest}`,
      ]);
      pushed.set(dest, (await readFile(digestFile, "utf8")).trim());
    };
    await push("pause", "google_containers/pause-amd64:3.1", ["--format=v2s2"]);
    await push("web", "test/web:1", ["--all"]);
    webRef = `${registry.host}/test/web:1`;

    upstream = await startUpstream();
    const archiveBody = gzipSync(
      await tarOf({ "bin/hyperkube": randomBytes(200_000), README: "test archive\n" }),
    );
    upstream.files.set("/rel/app.tar.gz", archiveBody);
    archive = {
      url: `${upstream.base}/rel/app.tar.gz`,
      sha256: sha(archiveBody),
      body: archiveBody,
    };
    const toolBody = randomBytes(120_000);
    upstream.files.set("/rel/tool", toolBody);
    tool = { url: `${upstream.base}/rel/tool`, sha256: sha(toolBody), body: toolBody };

    labText = bundleLab();
    labFile = join(work, "lab.yaml");
    await writeFile(labFile, labText);
    cacheA = join(work, "cache-a");
    vagrantHomeA = join(work, "vagrant-a");
    await tinyBox(vagrantHomeA);
  }, 600_000);

  afterAll(async () => {
    try {
      await closeUpstream(upstream);
      await registry?.destroy();
    } finally {
      if (registryRoot) await rm(registryRoot, { recursive: true, force: true });
      if (work) await rm(work, { recursive: true, force: true });
    }
  }, 120_000);

  it("cache pull fills cache A with the artifacts and both images from the registry", async () => {
    const run = await k8slab(["cache", "pull", "lab.yaml"], {
      K8SLAB_CACHE: cacheA,
      NODE_EXTRA_CA_CERTS: join(registryRoot, "pki", "ca.pem"),
    });
    expect(run.code, explain(run)).toBe(0);
    expect(run.stderr).toContain(`2 artifacts and 2 images ready in ${cacheA}`);
    expect(run.stderr).toContain(
      `${PAUSE}: resolved to ${pushed.get("google_containers/pause-amd64:3.1")}`,
    );
    expect(run.stderr).toContain(`${webRef}: resolved to ${pushed.get("test/web:1")}`);
    expect(run.stderr).toContain(
      `tool: its upstream publishes no sha256; recorded the first download's: ${tool.sha256}`,
    );
    expect(upstream!.hits.get("/rel/app.tar.gz")).toBe(1);
    expect(upstream!.hits.get("/rel/tool")).toBe(1);
    const pins = JSON.parse(await readFile(join(cacheA, "pins.json"), "utf8")) as Record<
      string,
      string
    >;
    expect(pins).toEqual({ [tool.url]: tool.sha256 });
    expect(sha(await readFile(join(cacheA, "artifacts", archive.sha256, "app.tar.gz")))).toBe(
      archive.sha256,
    );
    expect(sha(await readFile(join(cacheA, "artifacts", tool.sha256, "tool")))).toBe(tool.sha256);

    const archives = await cachedArchives(cacheA);
    expect([...archives.keys()].sort()).toEqual([webRef, PAUSE].sort());
    // The manifest list was resolved to its linux/amd64 image.
    const web = archives.get(webRef)!;
    expect(web.digest).toBe(pushed.get("test/web:1"));
    const config = JSON.parse(
      await registry!.skopeo(["inspect", "--config", `docker-archive:${web.path}:${webRef}`]),
    ) as { architecture: string; config: { Labels: Record<string, string> } };
    expect(config.architecture).toBe("amd64");
    expect(config.config.Labels["k8slab.test"]).toBe("web-amd64");
  });

  it("cache export writes one tar: lab, artifacts, images, the box, and the manifest last", async () => {
    // The hand-made box is one Vagrant itself lists.
    expect(await vagrantBoxList(vagrantHomeA)).toContain(`${BOX} (libvirt, ${BOX_VERSION})`);
    const env = { K8SLAB_CACHE: cacheA, VAGRANT_HOME: vagrantHomeA };
    const run = await k8slab(["cache", "export", "lab.yaml", "out/bundle.tar"], env);
    expect(run.code, explain(run)).toBe(0);
    bundle = join(work, "out", "bundle.tar");
    expect(run.stderr).toMatch(
      new RegExp(
        `wrote ${bundle} \\(.* MB\\): lab ${LAB_NAME}, 2 artifacts, 2 images, box k8slab/tiny ${BOX_VERSION} \\(libvirt\\)`,
      ),
    );
    expect(run.stderr).toContain("on another machine: k8slab cache import out/bundle.tar");
    expect(await readdir(join(work, "out"))).toEqual(["bundle.tar"]);

    const listed = await execa("tar", ["-tf", bundle], { timeout: 60_000 });
    const names = listed.stdout.split("\n").filter(Boolean);
    const webHex = pushed.get("test/web:1")!.slice("sha256:".length);
    const pauseHex = pushed.get("google_containers/pause-amd64:3.1")!.slice("sha256:".length);
    expect(names).toEqual([
      "lab.yaml",
      `artifacts/${archive.sha256}/app.tar.gz`,
      `artifacts/${tool.sha256}/tool`,
      `images/${pauseHex}/gcr.io_google_containers_pause-amd64_3.1.tar`,
      `images/${webHex}/${webRef.replace(/[^A-Za-z0-9._-]/g, "_")}.tar`,
      "box/k8slab_tiny-libvirt.box",
      "k8slab-bundle.json",
    ]);
    // Our own reading of the headers agrees with GNU tar (the damage tests rely on it).
    const tar = await readFile(bundle);
    const entries = tarEntries(tar);
    expect(entries.map((e) => e.name)).toEqual(names);
    const manifestEntry = entries.at(-1)!;
    const manifest = JSON.parse(
      tar.subarray(manifestEntry.offset, manifestEntry.offset + manifestEntry.size).toString(),
    ) as BundleManifest;
    expect(manifest.lab).toEqual({ name: LAB_NAME, file: "lab.yaml" });
    expect(manifest.artifacts).toEqual([
      expect.objectContaining({ name: "app", url: archive.url, sha256: archive.sha256 }),
      expect.objectContaining({ name: "tool", url: tool.url, sha256: tool.sha256 }),
    ]);
    expect(manifest.box).toMatchObject({ name: BOX, version: BOX_VERSION, provider: "libvirt" });
    for (const e of entries.slice(1, -1)) {
      const listedSha = [...manifest.artifacts, ...manifest.images, manifest.box!].find(
        (m) => m.file === e.name,
      )?.sha256;
      expect(sha(tar.subarray(e.offset, e.offset + e.size)), e.name).toBe(listedSha);
    }
    const lab = entries[0]!;
    expect(tar.subarray(lab.offset, lab.offset + lab.size).toString()).toBe(labText);

    const json = await k8slab(
      ["cache", "export", "lab.yaml", "out/bundle-json.tar", "--json"],
      env,
    );
    expect(json.code, explain(json)).toBe(0);
    const result = JSON.parse(json.stdout) as Record<string, unknown>;
    expect(result).toMatchObject({
      ok: true,
      file: join(work, "out", "bundle-json.tar"),
      lab: LAB_NAME,
      artifacts: 2,
      images: 2,
      box: { name: BOX, version: BOX_VERSION, provider: "libvirt" },
    });
    await rm(join(work, "out", "bundle-json.tar"));
  });

  it("one file used twice (a tag and its digest, one file at two URLs) is in the bundle once and imports", async () => {
    const dir = await tmp();
    const webDigest = pushed.get("test/web:1")!;
    await writeFile(
      join(dir, "twice.yaml"),
      bundleLab(
        { pinned: `${webRef}@${webDigest}` },
        {
          tool: { url: tool.url, sha256: tool.sha256, kind: "binary" },
          "tool-mirror": {
            url: `${upstream!.base}/mirror/tool`,
            sha256: tool.sha256,
            kind: "binary",
          },
        },
      ),
    );
    const env = { K8SLAB_CACHE: cacheA, VAGRANT_HOME: vagrantHomeA };
    const exported = await k8slab(
      ["cache", "export", "twice.yaml", "twice.tar", "--no-box"],
      env,
      dir,
    );
    expect(exported.code, explain(exported)).toBe(0);
    const tar = await readFile(join(dir, "twice.tar"));
    const names = tarEntries(tar).map((e) => e.name);
    expect(names.filter((n) => n.endsWith("/tool"))).toHaveLength(1);
    expect(names.filter((n) => n.startsWith("images/"))).toHaveLength(2); // pause and web
    expect(new Set(names).size).toBe(names.length);

    const cacheE = join(dir, "cache-e");
    const imported = await k8slab(
      ["cache", "import", "twice.tar"],
      { K8SLAB_CACHE: cacheE, VAGRANT_HOME: join(dir, "vagrant") },
      dir,
    );
    expect(imported.code, explain(imported)).toBe(0);
    expect(imported.stderr).toContain(
      `imported 3 artifacts and 3 images into ${cacheE}; no box in the bundle`,
    );
    // Everything the lab names is now in cache E, with nothing to download (the file at the
    // second URL was never served by anyone).
    const pull = await k8slab(
      ["cache", "pull", join(cacheE, "labs", `${LAB_NAME}.yaml`)],
      { K8SLAB_CACHE: cacheE },
      dir,
    );
    expect(pull.code, explain(pull)).toBe(0);
    expect(pull.stderr).toContain(`3 artifacts and 3 images ready in ${cacheE}`);
    expect(pull.stderr).not.toMatch(/downloading/);
    expect(upstream!.hits.get("/mirror/tool")).toBeUndefined();
  });

  it("export from a cache that lacks something names it, hints cache pull, and writes nothing", async () => {
    const dir = await tmp();
    const missingLab = join(dir, "missing.yaml");
    await writeFile(
      missingLab,
      bundleLab(
        { other: `${registry!.host}/test/never:1` },
        { extra: { url: `${upstream!.base}/rel/extra`, sha256: "a".repeat(64), kind: "binary" } },
      ),
    );
    const out = join(dir, "out");
    await mkdir(out);
    const run = await k8slab(
      ["cache", "export", "missing.yaml", "out/bundle.tar"],
      {
        K8SLAB_CACHE: cacheA,
        VAGRANT_HOME: vagrantHomeA,
      },
      dir,
    );
    expect(run.code, explain(run)).toBe(1);
    expect(run.stderr).toContain(
      `error: the cache lacks what lab ${LAB_NAME} needs: artifact extra, image ${registry!.host}/test/never:1`,
    );
    expect(run.stderr).toContain("hint: download it first: k8slab cache pull missing.yaml");
    expect(await readdir(out)).toEqual([]);
    expect(upstream!.hits.get("/rel/extra")).toBeUndefined();
  });

  it("an interrupted export (SIGINT while adding a big artifact) exits 130 and leaves no file", async () => {
    const dir = await tmp();
    const cache = join(dir, "cache");
    // 320 MB in the cache under the artifact's path, as a pull would have left it.
    const url = `${upstream!.base}/big/huge.bin`;
    const block = randomBytes(16 * 1024 * 1024);
    const hash = createHash("sha256");
    const blocks = BIG_BYTES / block.length;
    const tmpBig = join(dir, "huge.bin");
    const handle = await open(tmpBig, "w");
    try {
      for (let i = 0; i < blocks; i++) {
        block.writeUInt32BE(i, 0);
        hash.update(block);
        await handle.write(block);
      }
    } finally {
      await handle.close();
    }
    const bigSha = hash.digest("hex");
    const target = join(cache, "artifacts", bigSha, "huge.bin");
    await mkdir(dirname(target), { recursive: true });
    await execa("mv", [tmpBig, target], { timeout: 60_000 });
    await writeFile(
      join(dir, "big.yaml"),
      editedLab("single-node", [
        [["name"], "big-lab"],
        ...OFFLINE,
        [["box"], { name: BOX }],
        [["provider"], { name: "libvirt" }],
        [["artifacts"], { big: { url, sha256: bigSha, kind: "file" } }],
      ]),
    );
    const out = join(dir, "out");
    await mkdir(out);

    const [node, ...rest] = cliArgv();
    const child = execa(
      node!,
      [...rest, "cache", "export", "big.yaml", "out/big.tar", "--no-box"],
      {
        cwd: dir,
        env: { ...baseEnv(), K8SLAB_CACHE: cache, VAGRANT_HOME: join(dir, "vagrant") },
        extendEnv: false,
        reject: false,
        stdin: "ignore",
        timeout: CLI_TIMEOUT_MS,
        forceKillAfterDelay: 5_000,
      },
    );
    let stderr = "";
    const adding = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 120_000);
      child.stderr?.on("data", (chunk: Buffer) => {
        stderr += chunk.toString();
        if (/^adding big \(/m.test(stderr)) {
          clearTimeout(timer);
          resolve(true);
        }
      });
      void child.finally(() => {
        clearTimeout(timer);
        resolve(false);
      });
    });
    const started = await adding;
    if (started) child.kill("SIGINT");
    const result = await child;
    expect(started, `never saw "adding big": ${stderr}`).toBe(true);
    expect(result.timedOut).toBe(false);
    expect(result.exitCode, stderr).toBe(130);
    expect(stderr).toContain("error: export interrupted; no bundle was written");
    expect(stderr).not.toMatch(/^wrote /m);
    expect(await readdir(out)).toEqual([]);
    // The cached artifact is untouched.
    expect(await filesUnder(cache)).toEqual([`artifacts/${bigSha}/huge.bin`]);
  });

  it("with nothing downloadable any more, import fills an empty cache and Vagrant, and pull needs nothing else", async () => {
    // Nothing can be downloaded from here on.
    const [registryIp, registryPort] = registry!.host.split(":");
    const serverPort = Number(new URL(upstream!.base).port);
    await closeUpstream(upstream);
    await registry!.destroy();
    expect(await reachable(registryIp!, Number(registryPort))).toBe(false);
    expect(await reachable("127.0.0.1", serverPort)).toBe(false);

    const cacheB = join(work, "cache-b");
    const vagrantHomeB = join(work, "vagrant-b");
    await mkdir(vagrantHomeB);
    const env = { K8SLAB_CACHE: cacheB, VAGRANT_HOME: vagrantHomeB };
    const run = await k8slab(["cache", "import", "out/bundle.tar"], env);
    expect(run.code, explain(run)).toBe(0);
    expect(run.stderr).toContain(
      `imported 2 artifacts and 2 images into ${cacheB}; box added to Vagrant`,
    );
    const labCopy = join(cacheB, "labs", `${LAB_NAME}.yaml`);
    expect(run.stderr).toContain(`create the lab with: k8slab create ${labCopy}`);
    expect(await readFile(labCopy, "utf8")).toBe(labText);
    expect(await vagrantBoxList(vagrantHomeB)).toContain(`${BOX} (libvirt, ${BOX_VERSION})`);
    // The box Vagrant unpacked is the one exported.
    const boxDir = (home: string) =>
      join(home, "boxes", BOX.replace("/", "-VAGRANTSLASH-"), BOX_VERSION, "libvirt");
    expect(sha(await readFile(join(boxDir(vagrantHomeB), "box.img")))).toBe(
      sha(await readFile(join(boxDir(vagrantHomeA), "box.img"))),
    );
    expect(await namedUnder(cacheB, ".import-")).toEqual([]);
    // The unpinned artifact's checksum is recorded, as its first download was in cache A.
    expect(JSON.parse(await readFile(join(cacheB, "pins.json"), "utf8"))).toEqual({
      [tool.url]: tool.sha256,
    });

    const pull = await k8slab(["cache", "pull", labCopy], env);
    expect(pull.code, explain(pull)).toBe(0);
    const lines = pull.stderr.split("\n").filter(Boolean);
    const summary = lines.pop();
    expect(summary).toBe(`2 artifacts and 2 images ready in ${cacheB}`);
    expect(lines.sort()).toEqual(
      ["app", "tool", PAUSE, webRef]
        .sort()
        .map((name) =>
          expect.stringMatching(
            new RegExp(
              `^${name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: in the cache, sha256 verified `,
            ),
          ),
        ),
    );

    const archivesA = await cachedArchives(cacheA);
    const archivesB = await cachedArchives(cacheB);
    expect([...archivesB.keys()].sort()).toEqual([...archivesA.keys()].sort());
    for (const [repoTag, b] of archivesB) {
      expect(b.digest).toBe(archivesA.get(repoTag)!.digest);
      expect(sha(await readFile(b.path))).toBe(archivesA.get(repoTag)!.sha256);
      const inspected = JSON.parse(
        await registry!.skopeo(["inspect", `docker-archive:${b.path}:${repoTag}`]),
      ) as { Architecture: string; Labels: Record<string, string> };
      expect(inspected.Architecture).toBe("amd64");
      expect(inspected.Labels["k8slab.test"]).toBe(repoTag === PAUSE ? "pause" : "web-amd64");
    }

    const again = await k8slab(["cache", "import", "out/bundle.tar"], env);
    expect(again.code, explain(again)).toBe(0);
    expect(again.stderr).toContain(
      `imported 2 artifacts and 2 images into ${cacheB}; box already in Vagrant`,
    );
    expect(await namedUnder(cacheB, ".import-")).toEqual([]);
  });

  it.each([
    ["an image", (name: string) => name.startsWith("images/")],
    ["an artifact", (name: string) => name.endsWith("/app.tar.gz")],
  ])(
    "a bundle with %s damaged is refused, naming it, and the cache gets nothing",
    async (_what, pick) => {
      const dir = await tmp();
      const tar = await bundleBytes();
      const entry = tarEntries(tar).find((e) => pick(e.name))!;
      expect(entry.size).toBeGreaterThan(1000);
      const at = entry.offset + (entry.size >> 1);
      tar[at] = tar[at]! ^ 0xff;
      await writeFile(join(dir, "damaged.tar"), tar);
      const cacheC = join(dir, "cache");
      const vagrantHome = join(dir, "vagrant");
      const run = await k8slab(
        ["cache", "import", "damaged.tar"],
        {
          K8SLAB_CACHE: cacheC,
          VAGRANT_HOME: vagrantHome,
        },
        dir,
      );
      expect(run.code, explain(run)).not.toBe(0);
      expect(run.stderr).toContain(
        `error: ${join(dir, "damaged.tar")} is damaged: ${entry.name} has sha256 `,
      );
      expect(await filesUnder(cacheC)).toEqual([]);
      expect(await namedUnder(cacheC, ".import-")).toEqual([]);
      expect(await filesUnder(vagrantHome)).toEqual([]);
    },
  );

  it("a truncated bundle is refused and leaves nothing in the cache", async () => {
    const dir = await tmp();
    const tar = await bundleBytes();
    await writeFile(join(dir, "half.tar"), tar.subarray(0, tar.length >> 1));
    const cacheC = join(dir, "cache");
    const run = await k8slab(
      ["cache", "import", "half.tar"],
      {
        K8SLAB_CACHE: cacheC,
        VAGRANT_HOME: join(dir, "vagrant"),
      },
      dir,
    );
    expect(run.code, explain(run)).not.toBe(0);
    expect(run.stderr).toContain(`error: ${join(dir, "half.tar")} is not a k8slab bundle: `);
    expect(run.stderr).toContain("hint: make one with: k8slab cache export");
    expect(await filesUnder(cacheC)).toEqual([]);
    expect(await namedUnder(cacheC, ".import-")).toEqual([]);
  });

  it.each([
    ["a ../ path", "../evil", "file"],
    ["an absolute path", "/ABS/evil", "file"],
    ["a symbolic link", `artifacts/${"b".repeat(64)}/evil`, "symlink"],
  ] as const)(
    "a tar holding %s is not a bundle, and nothing is written anywhere",
    async (_what, name, type) => {
      const dir = await tmp();
      const cacheC = join(dir, "deep", "cache");
      await mkdir(cacheC, { recursive: true });
      const entryName = name.replace("/ABS", dir);
      const pack = tarPack();
      pack.entry({ name: "lab.yaml", mode: 0o644 }, labText);
      if (type === "symlink") {
        pack.entry({ name: entryName, type: "symlink", linkname: join(dir, "evil") });
      } else {
        pack.entry({ name: entryName, mode: 0o644 }, "evil\n");
      }
      pack.entry({ name: "k8slab-bundle.json", mode: 0o644 }, "{}\n");
      pack.finalize();
      const chunks: Buffer[] = [];
      for await (const chunk of pack) chunks.push(chunk as Buffer);
      await writeFile(join(dir, "evil.tar"), Buffer.concat(chunks));
      const run = await k8slab(
        ["cache", "import", "evil.tar"],
        {
          K8SLAB_CACHE: cacheC,
          VAGRANT_HOME: join(dir, "vagrant"),
        },
        dir,
      );
      expect(run.code, explain(run)).not.toBe(0);
      expect(run.stderr).toContain(
        `error: ${join(dir, "evil.tar")} is not a k8slab bundle: it holds ${JSON.stringify(entryName)}`,
      );
      expect(await filesUnder(dir)).toEqual(["evil.tar"]);
      expect(await namedUnder(cacheC, ".import-")).toEqual([]);
    },
  );

  it("import refuses a bundle whose unpinned artifact the cache recorded otherwise, and moves nothing", async () => {
    const dir = await tmp();
    await bundleBytes();
    const cacheD = join(dir, "cache");
    await mkdir(cacheD);
    const other = "e".repeat(64);
    const pins = `${JSON.stringify({ [tool.url]: other }, null, 2)}\n`;
    await writeFile(join(cacheD, "pins.json"), pins);
    const vagrantHome = join(dir, "vagrant");
    const run = await k8slab(
      ["cache", "import", bundle],
      {
        K8SLAB_CACHE: cacheD,
        VAGRANT_HOME: vagrantHome,
      },
      dir,
    );
    expect(run.code, explain(run)).toBe(1);
    expect(run.stderr).toContain(
      `error: the cache recorded other content for: ${tool.url} (recorded ${other}, bundle ${tool.sha256})`,
    );
    expect(run.stderr).toMatch(/hint: .*remove those entries from .*pins\.json/);
    expect(await filesUnder(cacheD)).toEqual(["pins.json"]);
    expect(await readFile(join(cacheD, "pins.json"), "utf8")).toBe(pins);
    expect(await filesUnder(vagrantHome)).toEqual([]);
  });
});
