import { createHash, type Hash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { K8slabError } from "../errors.js";
import type { Descriptor } from "./manifest.js";
import { repositoryName, type Repository } from "./reference.js";
import { statusError, TransientError, type RegistryClient } from "./registry-client.js";

/**
 * Blobs being pulled: `<cache>/images/blobs/sha256/<hex>` once verified, `<hex>.part` while
 * arriving. A part survives an interrupted run, so the next one asks only for the rest.
 */
export function blobDir(cache: string): string {
  return join(cache, "images", "blobs", "sha256");
}

export function blobPath(cache: string, digest: string): string {
  return join(blobDir(cache), digest.slice("sha256:".length));
}

export async function sizeOf(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).size;
  } catch {
    return undefined;
  }
}

async function hashFile(path: string, hash: Hash): Promise<void> {
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
}

export interface BlobFetch {
  client: RegistryClient;
  repo: Repository;
  /** The image, for messages. */
  image: string;
  blob: Descriptor;
  cache: string;
  /** Bytes that arrived (or were already there when resuming). */
  onBytes: (bytes: number) => void;
}

/**
 * Make one blob present and verified in the store: resume a part with a Range request, else
 * download it whole; refuse content whose sha256 is not the digest.
 */
export async function fetchBlob(job: BlobFetch): Promise<void> {
  const { blob } = job;
  const path = blobPath(job.cache, blob.digest);
  if ((await sizeOf(path)) === blob.size) {
    job.onBytes(blob.size);
    return;
  }
  await mkdir(blobDir(job.cache), { recursive: true });
  const part = `${path}.part`;
  let offset = (await sizeOf(part)) ?? 0;
  if (offset > blob.size) {
    await rm(part, { force: true });
    offset = 0;
  }
  let hash = createHash("sha256");
  if (offset > 0) await hashFile(part, hash);
  let resumed = offset;
  if (offset < blob.size) {
    const response = await job.client.get(job.repo, `blobs/${blob.digest}`, {
      ...(offset > 0 ? { range: `bytes=${offset}-` } : {}),
    });
    const { statusCode } = response;
    const contentRange = String(response.headers["content-range"] ?? "");
    if (statusCode === 206 && contentRange.startsWith(`bytes ${offset}-`)) {
      // the rest follows
    } else if (statusCode === 200) {
      // Without a part, or when the registry (or a redirect target) ignored Range: all of it.
      offset = 0;
      hash = createHash("sha256");
    } else {
      await response.body.dump();
      if (statusCode === 404) {
        throw new K8slabError(
          `${job.image}: blob ${blob.digest} is missing in ${repositoryName(job.repo)}`,
          { hint: "the registry lost part of the image; try another tag or mirror" },
        );
      }
      if (statusCode === 206 || statusCode === 416) {
        await rm(part, { force: true });
        throw new TransientError(
          `${job.image}: blob ${blob.digest}: bad range answer, starting over`,
        );
      }
      throw statusError(`${repositoryName(job.repo)} blob ${blob.digest}`, statusCode);
    }
    job.onBytes(offset);
    resumed = offset;
    let received = offset;
    const meter = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        received += chunk.length;
        if (received > blob.size) {
          done(
            new TransientError(
              `${job.image}: blob ${blob.digest} is larger than ${blob.size} bytes`,
            ),
          );
          return;
        }
        hash.update(chunk);
        job.onBytes(chunk.length);
        done(null, chunk);
      },
    });
    await pipeline(
      response.body,
      meter,
      createWriteStream(part, { flags: offset > 0 ? "a" : "w" }),
    );
    if (received !== blob.size) {
      throw new TransientError(
        `${job.image}: blob ${blob.digest}: got ${received} of ${blob.size} bytes`,
      );
    }
  } else {
    job.onBytes(offset);
  }
  const actual = `sha256:${hash.digest("hex")}`;
  if (actual !== blob.digest) {
    await rm(part, { force: true });
    if (resumed > 0) {
      // The earlier part may be what is wrong: one more attempt from the first byte.
      throw new TransientError(`${job.image}: blob ${blob.digest} did not verify after resuming`);
    }
    throw new K8slabError(
      `${job.image}: blob ${blob.digest} from ${repositoryName(job.repo)} is corrupt: its content has ${actual}`,
      {
        hint: "the registry or something between (a proxy) damaged it; nothing was stored. Try again later, or map the registry to a mirror",
      },
    );
  }
  await rename(part, path);
}
