/**
 * pullImages against a real registry (distribution 2.8 from Debian) in a network namespace of the
 * test, with TLS from a test CA and the bearer-token flow served by a token service in this
 * process; the test images are built here and pushed with skopeo; the archives are read back with
 * `skopeo inspect docker-archive:`. The client may connect only to the test's own addresses.
 */
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PullProgress } from "../src/artifacts/cache.js";
import { K8slabError } from "../src/errors.js";
import { imagePinsPath, pullImages, type PullImagesOptions } from "../src/images/index.js";
import { OciLayout, type TestImage } from "./helpers/registry-images.js";
import {
  cuttingProxy,
  skopeoAuth,
  startTestRegistry,
  USERS,
  type TestRegistry,
} from "./helpers/registry.js";
import { netnsSupport } from "./helpers/netns.js";
import { useTmpDirs } from "./helpers/tmp.js";

const support = netnsSupport();
const MB = 1 << 20;

let registry: TestRegistry;
let layout: OciLayout;
/** Digests as pushed, by destination repository:tag. */
const pushed = new Map<string, string>();
const images: Record<string, TestImage> = {};

async function push(
  source: string,
  dest: string,
  options: { format?: "v2s2" | "v2s1"; all?: boolean } = {},
): Promise<void> {
  const digestFile = join(registry.scratch, `digest-${randomBytes(4).toString("hex")}`);
  await registry.skopeo([
    "copy",
    "--quiet",
    ...(options.all ? ["--all"] : []),
    ...(options.format ? [`--format=${options.format}`] : []),
    `--digestfile=${digestFile}`,
    ...skopeoAuth(registry, "dest-"),
    `oci:${layout.dir}:${source}`,
    `docker://${registry.host}/${dest}`,
  ]);
  pushed.set(dest, (await readFile(digestFile, "utf8")).trim());
}

/**
 * `skopeo inspect` of the image an archive holds under `repoTag` (skopeo fails when no image in
 * the archive has that RepoTag); `config` for the image configuration instead.
 */
async function inspectArchive(
  path: string,
  repoTag: string,
  config = false,
): Promise<Record<string, unknown>> {
  const out = await registry.skopeo([
    "inspect",
    ...(config ? ["--config"] : []),
    `docker-archive:${path}:${repoTag}`,
  ]);
  return JSON.parse(out) as Record<string, unknown>;
}

/** Registry access-log lines for GETs of one blob: [status, bytes]. */
async function blobGets(repo: string, digest: string): Promise<[number, number][]> {
  const needle = `"GET /v2/${repo}/blobs/${digest} `;
  return (await registry.log())
    .split("\n")
    .filter((l) => l.includes(needle))
    .map((l) => {
      const m = /" (\d{3}) (\d+) /.exec(l.slice(l.indexOf(needle)));
      return [Number(m?.[1]), Number(m?.[2])] as [number, number];
    });
}

describe.skipIf(!support.ok)("pulling images from a real registry", () => {
  const tmp = useTmpDirs();
  let root: string;

  async function options(extra: Partial<PullImagesOptions> = {}): Promise<PullImagesOptions> {
    const dir = await tmp();
    await chmod(dir, 0o755); // skopeo reads the archives as nobody
    const dockerConfig = join(dir, "docker-config.json");
    await writeFile(dockerConfig, "{}");
    return { cache: join(dir, "cache"), dockerConfig, dispatcher: registry.dispatcher(), ...extra };
  }

  async function dockerConfigWith(
    host: string,
    user: keyof typeof USERS,
    password: string = USERS[user],
  ): Promise<string> {
    const file = join(await tmp(), "config.json");
    const auth = Buffer.from(`${user}:${password}`).toString("base64");
    await writeFile(file, JSON.stringify({ auths: { [host]: { auth } } }));
    return file;
  }

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "k8slab-registry-"));
    registry = await startTestRegistry(root);
    layout = new OciLayout(join(root, "oci"));
    const small = (label: string, arch?: string) =>
      layout.image({
        label,
        ...(arch ? { architecture: arch } : {}),
        layers: [
          { "etc/k8slab-test": `${label}\n` },
          { "bin/hello": `#!/bin/sh\necho ${label}\n` },
        ],
      });
    images.oci = await small("oci");
    images.amd64 = await small("multi-amd64");
    images.arm64 = await small("multi-arm64", "arm64");
    images.corrupt = await small("corrupt");
    images.moving1 = await small("moving-1");
    images.moving2 = await small("moving-2");
    images.big = await layout.image({
      label: "big",
      layers: [{ "small.txt": "small\n" }, { "big.bin": randomBytes(6 * MB) }],
    });
    await layout.tag("oci", images.oci);
    await layout.tag("multi", await layout.index([images.arm64, images.amd64]));
    await layout.tag("arm-only", await layout.index([images.arm64]));
    for (const name of ["corrupt", "moving1", "moving2", "big"]) {
      await layout.tag(name, images[name]!);
    }
    await push("oci", "test/oci:v1");
    await push("oci", "test/docker:v1", { format: "v2s2" });
    await push("oci", "test/old:v1", { format: "v2s1" });
    await push("oci", "private/secret:v1");
    await push("oci", "mirror/pause-amd64:3.1");
    await push("multi", "test/multi:v1", { all: true });
    await push("multi", "test/multi-docker:v1", { all: true, format: "v2s2" });
    await push("arm-only", "test/arm-only:v1", { all: true });
    await push("corrupt", "test/corrupt:v1");
    await push("moving1", "test/moving:v1");
    await push("big", "test/big:v1");
    await push("big", "test/big-abort:v1");
  }, 180_000);

  afterAll(async () => {
    try {
      await registry?.destroy();
    } finally {
      if (root !== undefined) await rm(root, { recursive: true, force: true });
    }
  }, 60_000);

  it("pulls an OCI image through the bearer-token flow into an archive skopeo reads", async () => {
    const opts = await options();
    const name = `${registry.host}/test/oci:v1`;
    const before = registry.tokenRequests.length;
    const [pulled] = await pullImages([name], opts);
    expect(pulled).toMatchObject({
      name,
      repoTag: name,
      digest: pushed.get("test/oci:v1"),
      manifestDigest: images.oci!.digest,
      imageId: images.oci!.config.digest,
      downloaded: true,
      pinned: "resolved",
    });
    expect(pulled!.path.startsWith(opts.cache)).toBe(true);
    expect(pulled!.size).toBe((await stat(pulled!.path)).size);
    // The anonymous token the registry's challenge sent us for.
    expect(registry.tokenRequests.slice(before)).toContainEqual({
      user: undefined,
      scopes: ["repository:test/oci:pull"],
    });
    const inspected = await inspectArchive(pulled!.path, name);
    expect(inspected.Architecture).toBe("amd64");
    expect(inspected.Layers).toEqual(images.oci!.diffIds);
    await expect(inspectArchive(pulled!.path, `${registry.host}/test/other:v1`)).rejects.toThrow();
    const config = await inspectArchive(pulled!.path, name, true);
    expect(config).toMatchObject({ config: { Labels: { "k8slab.test": "oci" } } });
    // Everything the archive needs is in it: skopeo can copy it out whole, layers checked.
    await registry.skopeo([
      "copy",
      "--quiet",
      `docker-archive:${pulled!.path}`,
      `oci:${join(registry.scratch, "copy-back")}:x`,
    ]);
  });

  it("reads a Docker schema 2 manifest", async () => {
    const name = `${registry.host}/test/docker:v1`;
    const [pulled] = await pullImages([name], await options());
    expect(pulled!.digest).toBe(pushed.get("test/docker:v1"));
    expect(pulled!.digest).not.toBe(images.oci!.digest); // skopeo converted it
    expect(pulled!.imageId).toBe(images.oci!.config.digest);
    expect((await inspectArchive(pulled!.path, name)).Layers).toEqual(images.oci!.diffIds);
  });

  it("resolves an OCI index and a Docker manifest list to linux/amd64", async () => {
    const names = [`${registry.host}/test/multi:v1`, `${registry.host}/test/multi-docker:v1`];
    const pulled = await pullImages(names, await options());
    expect(pulled.map((p) => p.digest)).toEqual([
      pushed.get("test/multi:v1"),
      pushed.get("test/multi-docker:v1"),
    ]);
    for (const p of pulled) {
      expect(p.imageId).toBe(images.amd64!.config.digest);
      expect(p.manifestDigest).not.toBe(p.digest);
      const config = await inspectArchive(p.path, p.repoTag, true);
      expect(config).toMatchObject({
        architecture: "amd64",
        config: { Labels: { "k8slab.test": "multi-amd64" } },
      });
    }
  });

  it("says which platforms an image offers when linux/amd64 is not among them", async () => {
    const name = `${registry.host}/test/arm-only:v1`;
    await expect(pullImages([name], await options())).rejects.toThrow(
      /has no linux\/amd64 image; it offers linux\/arm64/,
    );
  });

  it("reports a registry that offers only schema 1 with the image and what to do", async () => {
    const name = `${registry.host}/test/old:v1`;
    const error = await pullImages([name], await options()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(K8slabError);
    expect((error as K8slabError).message).toContain(name);
    expect((error as K8slabError).message).toMatch(/only as a Docker schema 1 manifest/);
    expect((error as K8slabError).hint).toMatch(/newer tag|skopeo copy --format v2s2/);
  });

  it("refuses a corrupted blob and stores nothing of it", async () => {
    const layer = images.corrupt!.layers[1]!;
    const file = registry.storedBlob(layer.digest);
    const data = await readFile(file);
    data[data.length >> 1] = data[data.length >> 1]! ^ 0xff;
    await writeFile(file, data);
    const opts = await options();
    const error = await pullImages([`${registry.host}/test/corrupt:v1`], opts).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(K8slabError);
    expect((error as Error).message).toMatch(new RegExp(`blob ${layer.digest} .* is corrupt`));
    const stored = await readdir(join(opts.cache, "images"), { recursive: true });
    expect(stored.filter((f) => f.endsWith(".tar"))).toEqual([]);
    expect(stored.filter((f) => f.includes(layer.digest.slice(7)))).toEqual([]);
  });

  it("resolves an unpinned tag once, records it, and then needs no network", async () => {
    const opts = await options();
    const name = `${registry.host}/test/moving:v1`;
    const [first] = await pullImages([name], opts);
    expect(first!.pinned).toBe("resolved");
    const pins = JSON.parse(await readFile(imagePinsPath(opts.cache), "utf8")) as Record<
      string,
      string
    >;
    expect(pins[name]).toBe(first!.digest);

    await push("moving2", "test/moving:v1"); // the tag moves upstream
    const offline = registry.dispatcher([]);
    const [again] = await pullImages([name], { ...opts, dispatcher: offline });
    expect(again).toMatchObject({ digest: first!.digest, downloaded: false, pinned: "recorded" });
    expect(offline.refused).toEqual([]);

    // Pinned to the new digest in the reference, the new image is pulled.
    const moved = `${name}@${pushed.get("test/moving:v1")}`;
    const [pinned] = await pullImages([moved], opts);
    expect(pinned).toMatchObject({
      repoTag: name,
      digest: pushed.get("test/moving:v1"),
      imageId: images.moving2!.config.digest,
      pinned: "reference",
      downloaded: true,
    });
  });

  it("continues a blob cut off mid-transfer with a Range request", async () => {
    const proxy = await cuttingProxy({ host: registry.ip, port: 5000 }, 2 * MB);
    try {
      const events: PullProgress[] = [];
      const address = `127.0.0.1:${proxy.port}`;
      const name = `${address}/test/big:v1`;
      const opts = await options({
        dispatcher: registry.dispatcher([address, registry.tokenHost]),
        onProgress: (p) => events.push(p),
      });
      const [pulled] = await pullImages([name], opts);
      expect(proxy.cuts()).toBe(1);
      expect(events.filter((e) => e.event === "retry")).toHaveLength(1);
      const big = images.big!.layers[1]!;
      const gets = await blobGets("test/big", big.digest);
      const resumed = gets.filter(([status]) => status === 206);
      expect(resumed, JSON.stringify(gets)).toHaveLength(1);
      expect(resumed[0]![1]).toBeGreaterThan(0);
      expect(resumed[0]![1]).toBeLessThan(big.size - MB);
      expect((await inspectArchive(pulled!.path, name)).Layers).toEqual(images.big!.diffIds);
    } finally {
      await proxy.close();
    }
  });

  it("after an interrupted pull, fetches only the rest of the cut blob", async () => {
    const name = `${registry.host}/test/big-abort:v1`;
    const [small, big] = images.big!.layers as [TestImage["layers"][0], TestImage["layers"][0]];
    const controller = new AbortController();
    const opts = await options({ concurrency: 1 });
    const interrupted = pullImages([name], {
      ...opts,
      signal: controller.signal,
      onProgress: (p) => {
        if (p.event === "progress" && (p.received ?? 0) > big.size / 3) controller.abort();
      },
    });
    await expect(interrupted).rejects.toThrow();
    const part = join(opts.cache, "images", "blobs", "sha256", `${big.digest.slice(7)}.part`);
    const kept = (await stat(part)).size;
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThan(big.size);

    const [pulled] = await pullImages([name], opts);
    expect((await inspectArchive(pulled!.path, name)).Layers).toEqual(images.big!.diffIds);
    const bigGets = await blobGets("test/big-abort", big.digest);
    expect(bigGets.map(([s]) => s)).toEqual([200, 206]);
    expect(bigGets[1]![1]).toBe(big.size - kept);
    // The small layer and the config were finished the first time: fetched once.
    expect(await blobGets("test/big-abort", small.digest)).toHaveLength(1);
    expect(await blobGets("test/big-abort", images.big!.config.digest)).toHaveLength(1);
    // Once the archive is written the downloaded blobs are gone; only the archive stays.
    expect(await readdir(join(opts.cache, "images", "blobs", "sha256"))).toEqual([]);
  });

  it("uses the Docker config's credentials where the token service wants them", async () => {
    const name = `${registry.host}/private/secret:v1`;
    const anonymous = await pullImages([name], await options()).catch((e: unknown) => e);
    expect(anonymous).toBeInstanceOf(K8slabError);
    expect((anonymous as K8slabError).message).toMatch(/access denied: .* has no credentials for/);
    expect((anonymous as K8slabError).hint).toContain(`docker login ${registry.host}`);

    const wrong = await dockerConfigWith(registry.host, "alice", "not-her-password");
    await expect(pullImages([name], await options({ dockerConfig: wrong }))).rejects.toThrow(
      /token service of .* refused repository:private\/secret:pull: the user name and password .* were refused/,
    );

    const before = registry.tokenRequests.length;
    const dockerConfig = await dockerConfigWith(registry.host, "alice");
    const [pulled] = await pullImages([name], await options({ dockerConfig }));
    expect(pulled!.imageId).toBe(images.oci!.config.digest);
    expect(registry.tokenRequests.slice(before)).toContainEqual({
      user: "alice",
      scopes: ["repository:private/secret:pull"],
    });
  });

  it("answers a basic-auth challenge with the Docker config's credentials", async () => {
    const name = `${registry.basicHost}/test/oci:v1`;
    const without = await pullImages([name], await options()).catch((e: unknown) => e);
    expect(without).toBeInstanceOf(K8slabError);
    expect((without as K8slabError).message).toMatch(/asks for a user name and password/);

    const dockerConfig = await dockerConfigWith(registry.basicHost, "alice");
    const [pulled] = await pullImages([name], await options({ dockerConfig }));
    expect(pulled!.digest).toBe(pushed.get("test/oci:v1"));
    expect((await inspectArchive(pulled!.path, name)).Labels).toEqual({ "k8slab.test": "oci" });
  });

  it("fetches from a registry mirror while the archive keeps the original name", async () => {
    const name = "gcr.io/google_containers/pause-amd64:3.1";
    const dispatcher = registry.dispatcher();
    const [pulled] = await pullImages([name], {
      ...(await options()),
      dispatcher,
      mirrors: { "gcr.io/google_containers": `${registry.host}/mirror` },
    });
    expect(dispatcher.refused).toEqual([]);
    expect(pulled).toMatchObject({ repoTag: name, digest: pushed.get("mirror/pause-amd64:3.1") });
    expect((await inspectArchive(pulled!.path, name)).Labels).toEqual({ "k8slab.test": "oci" });
  });
});
