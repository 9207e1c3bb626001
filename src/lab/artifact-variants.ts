import { ARCHES, type Arch, type Lab, type LabArtifact, type LabNode } from "./schema.js";

/**
 * Per-architecture artifacts. An artifact gives one `url` for every node, or `urls` with one file
 * per architecture. Each file the host downloads and serves is a *download*: a single-url
 * artifact is served under its own name (GET /flannel), an architecture's file under the name
 * and the architecture (GET /flannel-arm). A node keeps its copy under the artifact's name, so
 * every phase after `artifacts` reads the same paths whatever the node's architecture.
 */

export const DEFAULT_ARCH: Arch = "amd64";

/** What the host serves is named like an artifact (src/artifacts/server.ts): at most 41 characters. */
export const SERVED_NAME_MAX = 41;

export function nodeArch(node: Pick<LabNode, "arch">): Arch {
  return node.arch ?? DEFAULT_ARCH;
}

/** The name the host serves an artifact's file under, for a node of this architecture. */
export function servedName(name: string, artifact: Pick<LabArtifact, "urls">, arch: Arch): string {
  return artifact.urls ? `${name}-${arch}` : name;
}

/** One file the host downloads, verifies and serves. */
export interface ArtifactDownload {
  /** The served name (GET /<name>): the artifact's name, or `<artifact>-<arch>`. */
  name: string;
  artifact: string;
  /** Set for one architecture's file of a per-architecture artifact. */
  arch?: Arch;
  url: string;
  sha256?: string | undefined;
}

/** The file a node of this architecture gets, or undefined when the artifact has none for it. */
export function variantFor(
  name: string,
  artifact: LabArtifact,
  arch: Arch,
): ArtifactDownload | undefined {
  if (!artifact.urls) {
    if (artifact.url === undefined) return undefined;
    return { name, artifact: name, url: artifact.url, sha256: artifact.sha256 };
  }
  const variant = artifact.urls[arch];
  if (!variant) return undefined;
  return {
    name: servedName(name, artifact, arch),
    artifact: name,
    arch,
    url: variant.url,
    sha256: variant.sha256,
  };
}

/** Whether a node fetches the artifact: no role filter, or one of its roles. */
export function nodeFetches(
  node: Pick<LabNode, "roles">,
  artifact: Pick<LabArtifact, "roles">,
): boolean {
  return !artifact.roles || artifact.roles.some((r) => node.roles.includes(r));
}

/**
 * Every file the lab needs, each once: a single-url artifact's file, and of a per-architecture
 * artifact the file of each architecture among the nodes that fetch it.
 */
export function labDownloads(lab: Pick<Lab, "artifacts" | "nodes">): ArtifactDownload[] {
  const downloads: ArtifactDownload[] = [];
  for (const [name, artifact] of Object.entries(lab.artifacts)) {
    if (!artifact.urls) {
      const single = variantFor(name, artifact, DEFAULT_ARCH);
      if (single) downloads.push(single);
      continue;
    }
    const arches = new Set(
      lab.nodes.filter((n) => nodeFetches(n, artifact)).map((n) => nodeArch(n)),
    );
    for (const arch of ARCHES.filter((a) => arches.has(a))) {
      const variant = variantFor(name, artifact, arch);
      if (variant) downloads.push(variant);
    }
  }
  return downloads;
}
