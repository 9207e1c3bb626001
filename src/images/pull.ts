import { createHash } from "node:crypto";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import pMap from "p-map";
import pRetry from "p-retry";
import type { Dispatcher } from "undici";
import { sha256File, type PullProgress } from "../artifacts/cache.js";
import { K8slabError } from "../errors.js";
import { writeDockerArchive } from "./archive.js";
import { blobPath, fetchBlob, sizeOf } from "./blobs.js";
import { dockerConfigPath, readDockerConfig } from "./docker-config.js";
import {
  ACCEPT_MANIFESTS,
  DIGEST,
  imageConfig,
  parseManifest,
  PLATFORM,
  platformEntry,
  platformsOf,
  type Descriptor,
  type ImageManifest,
} from "./manifest.js";
import { imagePinsPath, readImagePins, recordImagePin } from "./pins.js";
import {
  mirroredRepository,
  parseImageRef,
  repositoryName,
  type ImageRef,
  type Repository,
} from "./reference.js";
import { describe, RegistryClient, statusError } from "./registry-client.js";

/** Manifests are small JSON documents; anything larger is not one. */
const MAX_MANIFEST_BYTES = 4 << 20;

export interface PullImagesOptions {
  cache: string;
  /** Registry (or registry/path) -> mirror location (host[:port][/path]) to fetch from instead. */
  mirrors?: Record<string, string>;
  onProgress?: (p: PullProgress) => void;
  signal?: AbortSignal;
  /** A Docker client config with registry credentials (default: where the Docker CLI keeps it). */
  dockerConfig?: string;
  /** undici dispatcher for all requests (default: direct, or HTTP(S)_PROXY). */
  dispatcher?: Dispatcher;
  /** Attempts per manifest and per blob for transient failures (network, 5xx, 429). */
  attempts?: number;
  /** A request that receives nothing for this long fails (and is retried). */
  stallMs?: number;
  /** Blobs of one image downloaded at once. */
  concurrency?: number;
}

export interface PulledImage {
  /** The reference as given. */
  name: string;
  /** The name `docker load` gives the image. */
  repoTag: string;
  /** The digest the reference stands for (a manifest list's, or the manifest's). */
  digest: string;
  /** The linux/amd64 image manifest. */
  manifestDigest: string;
  /** The config digest: the image ID Docker shows once loaded. */
  imageId: string;
  /** The docker-archive in the cache. */
  path: string;
  size: number;
  sha256: string;
  /** false when it was already in the cache (no network used). */
  downloaded: boolean;
  /** Where the digest came from: the reference, the cache's pins, or resolved in this pull. */
  pinned: "reference" | "recorded" | "resolved";
}

export type ArchiveRecord = Pick<
  PulledImage,
  "repoTag" | "digest" | "manifestDigest" | "imageId" | "size" | "sha256"
>;

/** Where the archive of an image lives: by the digest it was pulled at, named after its tag. */
export function imageArchivePath(cache: string, digest: string, repoTag: string): string {
  const file = repoTag.replace(/[^A-Za-z0-9._-]/g, "_");
  return join(cache, "images", digest.slice("sha256:".length), `${file}.tar`);
}

/** An image's archive in the cache and what is known of it. */
export interface CachedImage {
  /** The reference as given. */
  name: string;
  path: string;
  record: ArchiveRecord;
}

/**
 * The archive the cache holds for an image reference, found without the network: by the digest
 * the reference pins, else the one recorded for its tag; undefined when the cache has none.
 */
export async function findCachedImage(
  cache: string,
  input: string,
): Promise<CachedImage | undefined> {
  const ref = parseImageRef(input);
  const digest = ref.digest ?? (await readImagePins(cache))[ref.repoTag];
  if (digest === undefined) return undefined;
  const path = imageArchivePath(cache, digest, ref.repoTag);
  const record = await readArchiveRecord(path);
  return record && { name: input, path, record };
}

/**
 * Put a verified archive into the cache as a pull leaves it (the file is moved, then its record
 * written: a record without its archive never exists), and record the tag's digest when the
 * reference has none. `file` undefined: the archive is in place already (another reference to the
 * same image moved it). Returns where it is.
 */
export async function storeImageArchive(
  cache: string,
  input: string,
  record: ArchiveRecord,
  file: string | undefined,
): Promise<string> {
  const ref = parseImageRef(input);
  const path = imageArchivePath(cache, record.digest, ref.repoTag);
  await mkdir(dirname(path), { recursive: true });
  if (file !== undefined) await rename(file, path);
  await writeFile(recordPath(path), `${JSON.stringify(record, null, 2)}\n`);
  if (!ref.digest) await recordImagePin(cache, ref.repoTag, record.digest);
  return path;
}

function recordPath(archive: string): string {
  return `${archive}.json`;
}

async function readArchiveRecord(archive: string): Promise<ArchiveRecord | undefined> {
  try {
    const record = JSON.parse(await readFile(recordPath(archive), "utf8")) as ArchiveRecord;
    return (await sizeOf(archive)) === record.size ? record : undefined;
  } catch {
    return undefined;
  }
}

interface Context {
  options: PullImagesOptions;
  client: RegistryClient;
  report: (p: PullProgress) => void;
  /** Blobs of images whose archive is written, and of images that are not. */
  doneBlobs: Set<string>;
  pendingBlobs: Set<string>;
}

/**
 * Pull container images for linux/amd64 into the cache, each once per host, as docker-archives
 * `docker load` reads. A reference without a digest is resolved once and its digest recorded;
 * a pinned one (or a recorded one) whose archive is there needs no network at all.
 */
export async function pullImages(
  images: readonly string[],
  options: PullImagesOptions,
): Promise<PulledImage[]> {
  const refs = [...new Set(images)].map(parseImageRef);
  for (const ref of refs) mirroredRepository(ref, options.mirrors ?? {});
  const dockerConfig = await readDockerConfig(options.dockerConfig ?? dockerConfigPath());
  const client = new RegistryClient({
    dockerConfig,
    stallMs: options.stallMs ?? 60_000,
    ...(options.dispatcher ? { dispatcher: options.dispatcher } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  const context: Context = {
    options,
    client,
    report: options.onProgress ?? (() => {}),
    doneBlobs: new Set(),
    pendingBlobs: new Set(),
  };
  const results: PulledImage[] = [];
  try {
    for (const ref of refs) results.push(await pullOne(ref, context));
  } finally {
    await client.close();
    // Verified blobs stay only while an unfinished image needs them; their parts stay too.
    for (const digest of context.doneBlobs) {
      if (!context.pendingBlobs.has(digest))
        await rm(blobPath(options.cache, digest), { force: true });
    }
  }
  return results;
}

async function cached(
  ref: ImageRef,
  digest: string,
  pinned: PulledImage["pinned"],
  context: Context,
): Promise<PulledImage | undefined> {
  const path = imageArchivePath(context.options.cache, digest, ref.repoTag);
  const record = await readArchiveRecord(path);
  if (record === undefined) return undefined;
  const actual = await sha256File(path);
  if (actual !== record.sha256) {
    // Written from verified blobs, so changed since: made again from the registry.
    context.report({
      name: ref.input,
      event: "damaged",
      message: `sha256 ${actual}, expected ${record.sha256}`,
    });
    await rm(path, { force: true });
    return undefined;
  }
  context.report({ name: ref.input, event: "cached", total: record.size });
  return { name: ref.input, ...record, path, downloaded: false, pinned };
}

async function pullOne(ref: ImageRef, context: Context): Promise<PulledImage> {
  const { cache } = context.options;
  const pins = await readImagePins(cache);
  const known = ref.digest ?? pins[ref.repoTag];
  const pinned = ref.digest ? "reference" : known ? "recorded" : "resolved";
  if (known) {
    const hit = await cached(ref, known, pinned, context);
    if (hit) return hit;
  }
  const source = mirroredRepository(ref, context.options.mirrors ?? {});
  context.report({ name: ref.input, event: "start" });
  const top = await manifest(ref, source, known ?? ref.tag, context, pinned === "recorded");
  const digest = top.digest;
  if (!known) {
    await recordImagePin(cache, ref.repoTag, digest);
    context.report({ name: ref.input, event: "resolved", sha256: digest });
  }
  const hit = known ? undefined : await cached(ref, digest, pinned, context);
  if (hit) return hit;

  let image: ImageManifest;
  let manifestDigest = digest;
  const parsed = top.parsed;
  if (parsed.kind === "index") {
    const entry = platformEntry(parsed.index);
    if (!entry) {
      throw new K8slabError(
        `${ref.input} has no ${PLATFORM.os}/${PLATFORM.architecture} image; it offers ${platformsOf(parsed.index).join(", ") || "none"}`,
        { hint: "use an image (or tag) built for linux/amd64" },
      );
    }
    const inner = await manifest(ref, source, entry.digest, context);
    if (inner.parsed.kind !== "image") {
      throw new K8slabError(
        `${ref.input}: the linux/amd64 entry ${entry.digest} is not an image manifest`,
      );
    }
    image = inner.parsed.manifest;
    manifestDigest = entry.digest;
  } else if (parsed.kind === "image") {
    image = parsed.manifest;
  } else {
    throw unreadable(ref, source, parsed);
  }

  const blobs = [image.config, ...image.layers];
  for (const b of blobs) context.pendingBlobs.add(b.digest);
  const total = blobs.reduce((sum, b) => sum + b.size, 0);
  let received = 0;
  let lastReport = 0;
  const count = (bytes: number): void => {
    received += bytes;
    if (Math.abs(received - lastReport) >= 1 << 20 || received === total) {
      lastReport = received;
      context.report({ name: ref.input, event: "progress", received, total });
    }
  };
  const fetch = (blob: Descriptor) =>
    retrying(ref, context, async () => {
      // A failed attempt takes back what it counted; a resumed one counts its part again.
      let counted = 0;
      const onBytes = (bytes: number): void => {
        counted += bytes;
        count(bytes);
      };
      try {
        await fetchBlob({
          client: context.client,
          repo: source,
          image: ref.input,
          blob,
          cache,
          onBytes,
        });
      } catch (error) {
        count(-counted);
        throw error;
      }
    });

  await fetch(image.config);
  checkConfig(ref, image, await readFile(blobPath(cache, image.config.digest), "utf8"));
  await pMap(image.layers, fetch, {
    concurrency: context.options.concurrency ?? 3,
    ...(context.options.signal ? { signal: context.options.signal } : {}),
  });

  const path = imageArchivePath(cache, digest, ref.repoTag);
  const archive = await writeDockerArchive({
    cache,
    repoTag: ref.repoTag,
    config: image.config,
    layers: image.layers,
    path,
  });
  const record: ArchiveRecord = {
    repoTag: ref.repoTag,
    digest,
    manifestDigest,
    imageId: image.config.digest,
    ...archive,
  };
  await writeFile(recordPath(path), `${JSON.stringify(record, null, 2)}\n`);
  for (const b of blobs) {
    context.pendingBlobs.delete(b.digest);
    context.doneBlobs.add(b.digest);
  }
  context.report({ name: ref.input, event: "done", received: total, total });
  return { name: ref.input, ...record, path, downloaded: true, pinned };
}

function checkConfig(ref: ImageRef, image: ImageManifest, text: string): void {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  const parsed = imageConfig.safeParse(json);
  if (!parsed.success) {
    throw new K8slabError(
      `${ref.input}: the image configuration ${image.config.digest} is malformed`,
    );
  }
  const { os, architecture, rootfs } = parsed.data;
  if ((os && os !== PLATFORM.os) || (architecture && architecture !== PLATFORM.architecture)) {
    throw new K8slabError(
      `${ref.input} is built for ${os ?? "?"}/${architecture ?? "?"}, not ${PLATFORM.os}/${PLATFORM.architecture}`,
      { hint: "use an image (or tag) built for linux/amd64" },
    );
  }
  if (rootfs.diff_ids.length !== image.layers.length) {
    throw new K8slabError(
      `${ref.input}: the manifest lists ${image.layers.length} layers but the configuration ${rootfs.diff_ids.length}; docker load would refuse it`,
    );
  }
}

function unreadable(
  ref: ImageRef,
  source: Repository,
  parsed: { kind: "schema1" | "unknown"; mediaType: string; problem?: string },
): K8slabError {
  if (parsed.kind === "schema1") {
    const from = repositoryName(source);
    return new K8slabError(
      `${ref.input}: ${from} offers this image only as a Docker schema 1 manifest (${parsed.mediaType || "schemaVersion 1"}), which k8slab does not pull`,
      {
        hint:
          `schema 1 is deprecated and current Docker refuses it as well. Use a newer tag of the image, or convert it once into a registry you control ` +
          `(skopeo copy --format v2s2 docker://${from}:${ref.tag} docker://<your-registry>/${ref.path}:${ref.tag}) and map ${ref.registry} to that registry in the lab's registry mirrors`,
      },
    );
  }
  return new K8slabError(
    `${ref.input}: ${repositoryName(source)} answered with a manifest k8slab cannot read (${parsed.problem})`,
  );
}

interface FetchedManifest {
  digest: string;
  parsed: ReturnType<typeof parseManifest>;
}

/** GET a manifest by tag or digest; its content must hash to the digest it was asked by. */
function manifest(
  ref: ImageRef,
  source: Repository,
  reference: string,
  context: Context,
  recordedPin = false,
): Promise<FetchedManifest> {
  return retrying(ref, context, async () => {
    const response = await context.client.get(source, `manifests/${reference}`, {
      accept: ACCEPT_MANIFESTS,
    });
    if (response.statusCode === 404) {
      await response.body.dump();
      throw new K8slabError(
        `${ref.input}: ${repositoryName(source)} has no manifest ${reference}`,
        {
          hint: [
            "check the image name and tag",
            ...(source.registry === ref.registry
              ? []
              : [`that the mirror for ${ref.registry} has the image`]),
            ...(recordedPin
              ? [
                  `or, if the tag has moved and the recorded digest is gone, remove ${ref.repoTag} from ${imagePinsPath(context.options.cache)} to resolve it again`,
                ]
              : []),
          ].join(", "),
        },
      );
    }
    if (response.statusCode !== 200) {
      await response.body.dump();
      throw statusError(`${repositoryName(source)} manifest ${reference}`, response.statusCode);
    }
    const chunks: Buffer[] = [];
    let length = 0;
    for await (const chunk of response.body) {
      length += (chunk as Buffer).length;
      if (length > MAX_MANIFEST_BYTES) {
        response.body.destroy();
        throw new K8slabError(`${ref.input}: the manifest ${reference} is larger than 4 MiB`);
      }
      chunks.push(chunk as Buffer);
    }
    const body = Buffer.concat(chunks);
    const digest = `sha256:${createHash("sha256").update(body).digest("hex")}`;
    if (DIGEST.test(reference) && digest !== reference) {
      throw new K8slabError(
        `${ref.input}: the manifest ${reference} from ${repositoryName(source)} is corrupt: its content has ${digest}`,
        {
          hint: "the registry (or a proxy) serves other content under this digest; nothing was stored",
        },
      );
    }
    const contentType = response.headers["content-type"];
    return {
      digest,
      parsed: parseManifest(body, Array.isArray(contentType) ? contentType[0] : contentType),
    };
  });
}

/** Bounded attempts for transient failures; K8slabErrors are final. */
async function retrying<T>(ref: ImageRef, context: Context, attempt: () => Promise<T>): Promise<T> {
  const { options } = context;
  try {
    return await pRetry(attempt, {
      retries: Math.max(0, (options.attempts ?? 4) - 1),
      minTimeout: 500,
      maxTimeout: 5_000,
      ...(options.signal ? { signal: options.signal } : {}),
      shouldRetry: ({ error }) => !(error instanceof K8slabError),
      onFailedAttempt: ({ error, attemptNumber, retriesLeft }) => {
        if (retriesLeft > 0 && !(error instanceof K8slabError)) {
          context.report({
            name: ref.input,
            event: "retry",
            message: `attempt ${attemptNumber} failed: ${describe(error)}`,
          });
        }
      },
    });
  } catch (error) {
    if (error instanceof K8slabError || options.signal?.aborted) throw error;
    throw new K8slabError(`cannot pull ${ref.input}: ${describe(error)}`, {
      hint: "check the network (and HTTPS_PROXY), then pull again: verified blobs are kept and a cut one continues where it stopped",
      cause: error,
    });
  }
}
