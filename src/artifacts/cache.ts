import { createHash, randomBytes } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { basename, join } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import pRetry, { AbortError } from "p-retry";
import { K8slabError } from "../errors.js";
import type { Lab } from "../lab/schema.js";

export type Artifact = Lab["artifacts"][string];

/** The per-user cache: one download per laptop, shared by every lab. */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.K8SLAB_CACHE) return env.K8SLAB_CACHE;
  const base = env.XDG_CACHE_HOME || join(env.HOME || homedir(), ".cache");
  return join(base, "k8slab");
}

/** Where a verified artifact lives: keyed by checksum, named like its URL. */
export function artifactPath(cache: string, sha256: string, url: string): string {
  return join(cache, "artifacts", sha256, basename(new URL(url).pathname) || "artifact");
}

export interface PullProgress {
  name: string;
  event: "cached" | "start" | "progress" | "done" | "retry";
  received?: number;
  total?: number;
  message?: string;
}

export interface PulledArtifact {
  name: string;
  url: string;
  sha256: string;
  path: string;
  size: number;
  /** false when it was already in the cache. */
  downloaded: boolean;
  /** true when its checksum was recorded by --pin rather than given in the lab file. */
  pinned: boolean;
}

export interface PullOptions {
  cache: string;
  /** Record the checksum of artifacts the lab gives none for (trust on first download). */
  pin?: boolean;
  onProgress?: (p: PullProgress) => void;
  /** Attempts per artifact for transient failures (network errors, 5xx). */
  attempts?: number;
  /** Abort a download that receives nothing for this long. */
  stallMs?: number;
  signal?: AbortSignal;
}

const PINS_FILE = "pins.json";

async function readPins(cache: string): Promise<Record<string, string>> {
  try {
    return JSON.parse(await readFile(join(cache, PINS_FILE), "utf8")) as Record<string, string>;
  } catch {
    return {};
  }
}

async function writePins(cache: string, pins: Record<string, string>): Promise<void> {
  const tmp = join(cache, `${PINS_FILE}.${randomBytes(4).toString("hex")}`);
  await writeFile(tmp, `${JSON.stringify(pins, null, 2)}\n`);
  await rename(tmp, join(cache, PINS_FILE));
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  await pipeline(createReadStream(path), hash);
  return hash.digest("hex");
}

/**
 * The checksum an artifact must have: the lab's, or the one pinned on an earlier download.
 * Throws when there is neither and pinning was not asked for.
 */
export async function expectedSha256(
  name: string,
  artifact: Artifact,
  cache: string,
  pin: boolean,
): Promise<string | undefined> {
  if (artifact.sha256) return artifact.sha256;
  const pinned = (await readPins(cache))[artifact.url];
  if (pinned) return pinned;
  if (pin) return undefined;
  throw new K8slabError(`artifact ${name} has no sha256 in the lab file and none was pinned yet`, {
    hint: `add its published sha256 to the lab file, or trust the first download: k8slab cache pull <lab> --pin`,
  });
}

/** Download every artifact of a lab once into the cache, verifying each checksum. */
export async function pullArtifacts(lab: Lab, options: PullOptions): Promise<PulledArtifact[]> {
  await mkdir(join(options.cache, "artifacts"), { recursive: true });
  const results: PulledArtifact[] = [];
  for (const [name, artifact] of Object.entries(lab.artifacts)) {
    results.push(await pullOne(name, artifact, options));
  }
  return results;
}

async function pullOne(
  name: string,
  artifact: Artifact,
  options: PullOptions,
): Promise<PulledArtifact> {
  const { cache } = options;
  const report = options.onProgress ?? (() => {});
  const expected = await expectedSha256(name, artifact, cache, options.pin ?? false);
  if (expected) {
    const path = artifactPath(cache, expected, artifact.url);
    const size = await sizeOf(path);
    if (size !== undefined) {
      report({ name, event: "cached", total: size });
      return {
        name,
        url: artifact.url,
        sha256: expected,
        path,
        size,
        downloaded: false,
        pinned: !artifact.sha256,
      };
    }
  }
  report({ name, event: "start" });
  const tmp = join(cache, "artifacts", `.${name}.${randomBytes(4).toString("hex")}.part`);
  try {
    const { sha256, size } = await pRetry(() => download(name, artifact.url, tmp, options), {
      retries: Math.max(0, (options.attempts ?? 3) - 1),
      minTimeout: 1_000,
      maxTimeout: 10_000,
      signal: options.signal,
      onFailedAttempt: ({ error, attemptNumber, retriesLeft }) => {
        if (retriesLeft > 0) {
          report({
            name,
            event: "retry",
            message: `attempt ${attemptNumber} failed: ${describe(error)}`,
          });
        }
      },
    }).catch((error: unknown) => {
      if (error instanceof K8slabError || options.signal?.aborted) throw error;
      throw new K8slabError(
        `cannot download artifact ${name} from ${artifact.url}: ${describe(error)}`,
        {
          hint: "check the network (and HTTPS_PROXY), then run k8slab cache pull again",
          cause: error,
        },
      );
    });
    if (expected && sha256 !== expected) {
      throw new K8slabError(
        `artifact ${name} is corrupt: ${artifact.url} has sha256 ${sha256}, expected ${expected}`,
        {
          hint: artifact.sha256
            ? "the download was damaged or the URL serves another file; run k8slab cache pull again, or check url and sha256 in the lab file"
            : `the file changed since it was pinned; check the URL, then remove its line from ${join(cache, PINS_FILE)} to pin again`,
        },
      );
    }
    const path = artifactPath(cache, sha256, artifact.url);
    await mkdir(join(cache, "artifacts", sha256), { recursive: true });
    await rename(tmp, path);
    if (!expected) await writePins(cache, { ...(await readPins(cache)), [artifact.url]: sha256 });
    report({ name, event: "done", received: size, total: size });
    return {
      name,
      url: artifact.url,
      sha256,
      path,
      size,
      downloaded: true,
      pinned: !artifact.sha256,
    };
  } finally {
    await rm(tmp, { force: true });
  }
}

/** fetch() hides the reason in `cause` (ENOTFOUND, ECONNREFUSED, ...). */
function describe(error: unknown): string {
  const e = error as { message?: string; cause?: { code?: string; message?: string } };
  const cause = e.cause?.code ?? e.cause?.message;
  return `${e.message ?? String(error)}${cause ? ` (${cause})` : ""}`;
}

async function sizeOf(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).size;
  } catch {
    return undefined;
  }
}

/** One attempt: stream to `tmp`, hashing on the way. Client errors (4xx) are not retried. */
async function download(
  name: string,
  url: string,
  tmp: string,
  options: PullOptions,
): Promise<{ sha256: string; size: number }> {
  const stallMs = options.stallMs ?? 60_000;
  const controller = new AbortController();
  const onAbort = () => controller.abort(options.signal?.reason);
  options.signal?.addEventListener("abort", onAbort, { once: true });
  let timer = setTimeout(() => controller.abort(new Error(`no data for ${stallMs} ms`)), stallMs);
  const resetTimer = () => {
    clearTimeout(timer);
    timer = setTimeout(() => controller.abort(new Error(`no data for ${stallMs} ms`)), stallMs);
  };
  try {
    const response = await fetch(url, { signal: controller.signal, redirect: "follow" });
    if (!response.ok || !response.body) {
      const error = new K8slabError(`artifact ${name}: ${url} answered HTTP ${response.status}`, {
        hint: "check the artifact's url in the lab file",
      });
      if (response.status >= 400 && response.status < 500) throw new AbortError(error);
      throw error;
    }
    const total = Number(response.headers.get("content-length")) || undefined;
    const hash = createHash("sha256");
    let received = 0;
    let lastReport = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        resetTimer();
        hash.update(chunk);
        received += chunk.length;
        if (received - lastReport >= 1 << 20 || received === total) {
          lastReport = received;
          options.onProgress?.({ name, event: "progress", received, ...(total ? { total } : {}) });
        }
        done(null, chunk);
      },
    });
    await pipeline(
      Readable.fromWeb(response.body as WebReadableStream),
      meter,
      createWriteStream(tmp),
    );
    if (total !== undefined && received !== total) {
      throw new Error(`artifact ${name}: received ${received} of ${total} bytes`);
    }
    return { sha256: hash.digest("hex"), size: received };
  } catch (error) {
    if (error instanceof AbortError) throw error;
    if (controller.signal.aborted && options.signal?.aborted)
      throw new AbortError(String(options.signal.reason));
    throw error instanceof Error ? error : new Error(String(error));
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
  }
}
