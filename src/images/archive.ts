import { randomBytes } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";
import { pipeline } from "node:stream/promises";
import { pack as tarPack } from "tar-stream";
import { K8slabError } from "../errors.js";
import { hashingStream } from "../util/hash-stream.js";
import { blobPath, sizeOf } from "./blobs.js";
import type { Descriptor } from "./manifest.js";

/** Entries get one fixed time, so the same image always gives the same archive bytes. */
const MTIME = new Date(0);

/** Where a blob goes inside the archive (the layout `docker save` uses since Docker 25). */
function entryName(digest: string): string {
  return `blobs/sha256/${digest.slice("sha256:".length)}`;
}

export interface ArchiveInput {
  cache: string;
  /** The name `docker load` tags the image with. */
  repoTag: string;
  config: Descriptor;
  layers: readonly Descriptor[];
  /** The file to write; written under another name first and renamed when complete. */
  path: string;
}

/**
 * Write a docker-archive (what `docker save` writes and `docker load` reads): manifest.json
 * naming the config, the layers in order and the RepoTags, next to the blobs themselves. Layers
 * stay as the registry compressed them; `docker load` decompresses. Every blob is checked against
 * its digest once more on the way in. Returns the archive's size and sha256.
 */
export async function writeDockerArchive(
  input: ArchiveInput,
): Promise<{ size: number; sha256: string }> {
  await mkdir(dirname(input.path), { recursive: true });
  const tmp = `${input.path}.${randomBytes(4).toString("hex")}.tmp`;
  const pack = tarPack();
  const archiveHash = hashingStream();
  const written = pipeline(pack, archiveHash, createWriteStream(tmp));
  try {
    const blobs = [input.config, ...input.layers];
    const unique = blobs.filter((b, i) => blobs.findIndex((o) => o.digest === b.digest) === i);
    for (const blob of unique) await addBlob(pack, input.cache, blob);
    const manifest = [
      {
        Config: entryName(input.config.digest),
        RepoTags: [input.repoTag],
        Layers: input.layers.map((l) => entryName(l.digest)),
      },
    ];
    await addEntry(pack, "manifest.json", Buffer.from(`${JSON.stringify(manifest)}\n`));
    pack.finalize();
    await written;
    await rename(tmp, input.path);
    return { size: archiveHash.bytes(), sha256: archiveHash.sha256() };
  } catch (error) {
    pack.destroy(error as Error);
    await written.catch(() => undefined);
    throw error;
  } finally {
    await rm(tmp, { force: true });
  }
}

function addEntry(pack: ReturnType<typeof tarPack>, name: string, content: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    pack.entry({ name, mode: 0o644, mtime: MTIME }, content, (error) =>
      error ? reject(error) : resolve(),
    );
  });
}

async function addBlob(
  pack: ReturnType<typeof tarPack>,
  cache: string,
  blob: Descriptor,
): Promise<void> {
  const path = blobPath(cache, blob.digest);
  const actualSize = await sizeOf(path);
  if (actualSize !== blob.size) {
    throw new K8slabError(
      `blob ${blob.digest} is ${actualSize === undefined ? "missing" : `${actualSize} bytes, not ${blob.size}`} in ${path}`,
      { hint: "run the pull again" },
    );
  }
  const hash = hashingStream();
  const entry = pack.entry({
    name: entryName(blob.digest),
    size: blob.size,
    mode: 0o644,
    mtime: MTIME,
  });
  await pipeline(createReadStream(path), hash, entry);
  const actual = `sha256:${hash.sha256()}`;
  if (actual !== blob.digest) {
    await rm(path, { force: true });
    throw new K8slabError(
      `blob ${blob.digest} changed on disk since it was verified (now ${actual})`,
      {
        hint: "it was removed; run the pull again to download it",
      },
    );
  }
}
