import { loadLab } from "../lab/load.js";
import type { Problem } from "../lab/problems.js";
import type { Lab } from "../lab/schema.js";
import { cachedImages, imageReference } from "../plan/plan.js";
import {
  cacheDir,
  pullArtifacts,
  type PullOptions,
  type PullProgress,
  type PulledArtifact,
} from "./cache.js";

export { cacheDir, planVerification, pullArtifacts, sha256File, artifactPath } from "./cache.js";
export type { PulledArtifact, PullProgress, Verification } from "./cache.js";
export { serveArtifacts, type ArtifactServer } from "./server.js";

/** Everything a lab downloads on the host: its artifacts, and its images as docker-archives. */
export interface LabDownloads {
  artifacts: PulledArtifact[];
  /** One entry per image artifact the nodes fetch (image-pause, ...), named as served. */
  images: PulledArtifact[];
}

/**
 * Download (once per host) and verify every artifact of the lab, then pull every image its nodes
 * run from the cache (over the registry API, through the lab's mirrors), each stored once by digest.
 */
export async function pullLabDownloads(lab: Lab, options: PullOptions): Promise<LabDownloads> {
  const artifacts = Object.keys(lab.artifacts).length > 0 ? await pullArtifacts(lab, options) : [];
  const wanted = cachedImages(lab);
  if (wanted.length === 0) return { artifacts, images: [] };
  const { pullImages } = await import("../images/index.js");
  const refs = wanted.map(imageReference);
  const pulled = await pullImages(refs, {
    cache: options.cache,
    mirrors: lab.images.mirrors,
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  const byRef = new Map(pulled.map((p) => [p.name, p]));
  const images = wanted.map((a, i): PulledArtifact => {
    const p = byRef.get(refs[i]!)!;
    return {
      name: a.name,
      url: a.url,
      sha256: p.sha256,
      path: p.path,
      size: p.size,
      downloaded: p.downloaded,
      pinned: p.pinned !== "reference",
      recorded: p.pinned === "resolved",
    };
  });
  return { artifacts, images };
}

export interface CachePullOptions {
  lab: string;
  cwd: string;
  env: NodeJS.ProcessEnv;
  onProgress?: (p: PullProgress) => void;
  signal?: AbortSignal;
}

/** `k8slab cache pull`: every artifact and image of a lab, once per host, verified. */
export async function cachePull(
  options: CachePullOptions,
): Promise<{ cache: string; warnings: Problem[] } & LabDownloads> {
  const { lab, warnings } = await loadLab(options.lab, { cwd: options.cwd });
  const cache = cacheDir(options.env);
  const downloads = await pullLabDownloads(lab, {
    cache,
    labRef: options.lab,
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  return { cache, ...downloads, warnings };
}
