import { loadLab } from "../lab/load.js";
import type { Problem } from "../lab/problems.js";
import { cacheDir, pullArtifacts, type PullProgress, type PulledArtifact } from "./cache.js";

export { cacheDir, planVerification, pullArtifacts, sha256File, artifactPath } from "./cache.js";
export type { PulledArtifact, PullProgress, Verification } from "./cache.js";
export { serveArtifacts, type ArtifactServer } from "./server.js";

export interface CachePullOptions {
  lab: string;
  cwd: string;
  env: NodeJS.ProcessEnv;
  onProgress?: (p: PullProgress) => void;
  signal?: AbortSignal;
}

/** `k8slab cache pull`: every artifact of a lab, once per host, verified. */
export async function cachePull(
  options: CachePullOptions,
): Promise<{ cache: string; artifacts: PulledArtifact[]; warnings: Problem[] }> {
  const { lab, warnings } = await loadLab(options.lab, { cwd: options.cwd });
  const cache = cacheDir(options.env);
  const artifacts = await pullArtifacts(lab, {
    cache,
    labRef: options.lab,
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  return { cache, artifacts, warnings };
}
