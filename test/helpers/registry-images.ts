/**
 * Tiny container images made by the tests themselves: layers are gzipped tars of files we choose,
 * written with their configs and manifests into an OCI image layout directory that skopeo pushes
 * (`oci:<dir>:<tag>`). Nothing is taken from the internet.
 */
import { createHash } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { pack } from "tar-stream";

export interface Blob {
  mediaType: string;
  digest: string;
  size: number;
}

export interface TestImage extends Blob {
  platform: { os: string; architecture: string };
  config: Blob;
  layers: Blob[];
  /** sha256 of each uncompressed layer tar, as in the config. */
  diffIds: string[];
}

export type LayerFiles = Record<string, string | Buffer>;

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX = "application/vnd.oci.image.index.v1+json";

function sha256(data: Buffer): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

export async function tarOf(files: LayerFiles): Promise<Buffer> {
  const archive = pack();
  for (const [name, content] of Object.entries(files)) {
    archive.entry({ name, mode: 0o755, mtime: new Date(0) }, Buffer.from(content));
  }
  archive.finalize();
  const chunks: Buffer[] = [];
  for await (const chunk of archive) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** An OCI image layout being filled: blobs by digest, tags in index.json. */
export class OciLayout {
  private readonly tags: { tag: string; descriptor: Blob }[] = [];

  constructor(readonly dir: string) {}

  async put(data: Buffer, mediaType: string): Promise<Blob> {
    const digest = sha256(data);
    await mkdir(join(this.dir, "blobs", "sha256"), { recursive: true });
    await writeFile(join(this.dir, "blobs", "sha256", digest.slice(7)), data);
    return { mediaType, digest, size: data.length };
  }

  /** One image: a gzipped layer per entry of `layers`, a config naming them, a manifest. */
  async image(options: {
    layers: LayerFiles[];
    architecture?: string;
    /** Ends up in the config, so otherwise equal images differ. */
    label: string;
    /** What a container of it runs (default: Cmd /bin/true). */
    entrypoint?: string[];
  }): Promise<TestImage> {
    const tars = await Promise.all(options.layers.map(tarOf));
    const layers = await Promise.all(
      tars.map((t) => this.put(gzipSync(t), "application/vnd.oci.image.layer.v1.tar+gzip")),
    );
    const diffIds = tars.map(sha256);
    const platform = { os: "linux", architecture: options.architecture ?? "amd64" };
    const config = await this.put(
      Buffer.from(
        JSON.stringify({
          ...platform,
          created: "2024-01-01T00:00:00Z",
          config: {
            ...(options.entrypoint ? { Entrypoint: options.entrypoint } : { Cmd: ["/bin/true"] }),
            Labels: { "k8slab.test": options.label },
          },
          rootfs: { type: "layers", diff_ids: diffIds },
          // One history entry per layer: skopeo needs them to write schema 1.
          history: tars.map((_, i) => ({
            created: "2024-01-01T00:00:00Z",
            created_by: `layer ${i}`,
          })),
        }),
      ),
      "application/vnd.oci.image.config.v1+json",
    );
    const manifest = await this.put(
      Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config, layers })),
      OCI_MANIFEST,
    );
    return { ...manifest, platform, config, layers, diffIds };
  }

  /** An OCI index over images of several platforms. */
  async index(images: readonly TestImage[]): Promise<Blob> {
    const manifests = images.map((i) => ({
      mediaType: i.mediaType,
      digest: i.digest,
      size: i.size,
      platform: i.platform,
    }));
    return this.put(
      Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests })),
      OCI_INDEX,
    );
  }

  async tag(tag: string, descriptor: Blob): Promise<void> {
    this.tags.push({ tag, descriptor });
    const manifests = this.tags.map((t) => ({
      mediaType: t.descriptor.mediaType,
      digest: t.descriptor.digest,
      size: t.descriptor.size,
      annotations: { "org.opencontainers.image.ref.name": t.tag },
    }));
    await writeFile(join(this.dir, "index.json"), JSON.stringify({ schemaVersion: 2, manifests }));
    await writeFile(join(this.dir, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  }
}

/**
 * Put an image into a k8slab cache as a pull would have left it (a docker-archive of one tiny
 * layer, its record, and the pin of its tag), so that a lab naming `ref` needs no registry: the
 * cache's use of an image, not the pull, is what such a test is about.
 */
export async function seedCachedImage(cache: string, ref: string): Promise<string> {
  const { imageArchivePath } = await import("../../src/images/index.js");
  const { recordImagePin } = await import("../../src/images/pins.js");
  const layerTar = await tarOf({ "stand-in": `${ref}\n` });
  const layer = gzipSync(layerTar);
  const config = Buffer.from(
    JSON.stringify({
      architecture: "amd64",
      os: "linux",
      rootfs: { type: "layers", diff_ids: [sha256(layerTar)] },
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify([{ Config: "config.json", RepoTags: [ref], Layers: ["layer.tar.gz"] }]),
  );
  const archive = await tarOf({
    "config.json": config,
    "layer.tar.gz": layer,
    "manifest.json": manifest,
  });
  const digest = sha256(Buffer.from(`manifest of ${ref}`));
  const path = imageArchivePath(cache, digest, ref);
  await mkdir(join(path, ".."), { recursive: true });
  await writeFile(path, archive);
  const record = {
    repoTag: ref,
    digest,
    manifestDigest: digest,
    imageId: sha256(config),
    size: archive.length,
    sha256: sha256(archive).slice("sha256:".length),
  };
  await writeFile(`${path}.json`, `${JSON.stringify(record, null, 2)}\n`);
  await recordImagePin(cache, ref, digest);
  return path;
}

/**
 * The test images that stand in for real ones (which cannot be had here), pushed to a test
 * registry: a pause container (tini in front of a sleep, from Debian's tini and busybox-static)
 * as a Docker schema 2 image at google_containers/pause-amd64:3.1, and a workload image (static
 * busybox as /bin/busybox and /bin/sh) as a manifest list for amd64 and arm64 at
 * k8slab-e2e/busybox:1. Returns those repository paths on the registry.
 */
export async function pushStandInImages(
  registry: {
    host: string;
    skopeo(args: readonly string[]): Promise<string>;
  },
  auth: string[],
  layoutDir: string,
): Promise<{ pause: string; web: string }> {
  const { readFile } = await import("node:fs/promises");
  const layout = new OciLayout(layoutDir);
  const busybox = await readFile("/bin/busybox");
  const pause = await layout.image({
    label: "pause stand-in",
    layers: [{ pause: await readFile("/usr/bin/tini-static"), "bin/busybox": busybox }],
    entrypoint: ["/pause", "--", "/bin/busybox", "sleep", "2147483647"],
  });
  const web = await layout.image({
    label: "web",
    layers: [{ "bin/busybox": busybox, "bin/sh": busybox }],
  });
  const webArm = await layout.image({
    label: "web arm64",
    architecture: "arm64",
    layers: [{ "etc/arch": "arm64\n" }],
  });
  await layout.tag("pause", pause);
  await layout.tag("web", await layout.index([webArm, web]));
  const paths = { pause: "google_containers/pause-amd64:3.1", web: "k8slab-e2e/busybox:1" };
  const push = (tag: string, dest: string, extra: string[]) =>
    registry.skopeo([
      "copy",
      "--quiet",
      ...extra,
      ...auth,
      `oci:${layout.dir}:${tag}`,
      `docker://${registry.host}/${dest}`,
    ]);
  await push("pause", paths.pause, ["--format=v2s2"]);
  await push("web", paths.web, ["--all"]);
  return paths;
}
