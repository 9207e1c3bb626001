import { parseFamiliarName } from "@swimlane/docker-reference";
import { K8slabError } from "../errors.js";

/** Where Docker Hub's images (`docker.io/...`) are served from. */
const DOCKER_HUB = "docker.io";
const DOCKER_HUB_API = "registry-1.docker.io";

/** A repository on a registry: what the Registry HTTP API v2 is asked about. */
export interface Repository {
  /** host[:port] as written in the name ("docker.io" for Docker Hub). */
  registry: string;
  /** The path on the registry, e.g. "google_containers/pause-amd64" or "library/busybox". */
  path: string;
}

export interface ImageRef extends Repository {
  /** The reference as given. */
  input: string;
  tag: string;
  /** sha256:... when the reference is pinned. */
  digest: string | undefined;
  /**
   * The name Docker knows the loaded image by: the reference as given, without its digest and
   * with ":latest" when it has no tag. It is what manifests use, so it never changes with mirrors.
   */
  repoTag: string;
}

/** Parse `[registry/]path[:tag][@sha256:...]` the way Docker does. */
export function parseImageRef(input: string): ImageRef {
  let parsed;
  try {
    parsed = parseFamiliarName(input);
  } catch (error) {
    throw new K8slabError(`image ${JSON.stringify(input)} is not a valid image reference`, {
      hint: "write images as registry/path:tag, optionally pinned with @sha256:<64 hex digits>",
      exitCode: 2,
      cause: error,
    });
  }
  const digest = parsed.digest;
  if (digest !== undefined && !/^sha256:[a-f0-9]{64}$/.test(digest)) {
    throw new K8slabError(`image ${input}: only sha256 digests are supported, not ${digest}`, {
      exitCode: 2,
    });
  }
  if (digest !== undefined && parsed.tag === undefined) {
    throw new K8slabError(`image ${input} is pinned by digest but has no tag`, {
      hint: `docker load names an image by its tag: write it as name:tag@${digest}`,
      exitCode: 2,
    });
  }
  const name = digest === undefined ? input : input.slice(0, input.length - digest.length - 1);
  return {
    input,
    registry: parsed.domain ?? DOCKER_HUB,
    path: parsed.repository ?? "",
    tag: parsed.tag ?? "latest",
    digest,
    repoTag: parsed.tag === undefined ? `${name}:latest` : name,
  };
}

/** "registry/path" for messages and mirror lookups. */
export function repositoryName(repo: Repository): string {
  return `${repo.registry}/${repo.path}`;
}

/**
 * Where to fetch a repository from: the longest mirror key that is the repository's name or a
 * leading part of it (whole path components) is replaced by its mirror location, e.g. with
 * `{ "gcr.io/google_containers": "registry.k8s.io" }` gcr.io/google_containers/pause-amd64 is
 * fetched from registry.k8s.io/pause-amd64.
 */
export function mirroredRepository(repo: Repository, mirrors: Record<string, string>): Repository {
  const name = repositoryName(repo);
  const match = Object.entries(mirrors)
    .map(([key, location]) => [key.replace(/\/+$/, ""), location.replace(/\/+$/, "")] as const)
    .filter(([key]) => name === key || name.startsWith(`${key}/`))
    .sort(([a], [b]) => b.length - a.length)[0];
  if (match === undefined) return { registry: repo.registry, path: repo.path };
  const [key, location] = match;
  const target = `${location}${name.slice(key.length)}`;
  try {
    const parsed = parseFamiliarName(target);
    if (parsed.tag !== undefined || parsed.digest !== undefined) throw new Error("has a tag");
    return { registry: parsed.domain ?? DOCKER_HUB, path: parsed.repository ?? "" };
  } catch (error) {
    throw new K8slabError(
      `registry mirror ${JSON.stringify(key)} -> ${JSON.stringify(location)} gives ${target}, which is not a repository name`,
      { hint: "write a mirror location as host[:port][/path]", exitCode: 2, cause: error },
    );
  }
}

/** The host[:port] that serves a registry's API. */
export function apiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API : registry;
}

/** Keys a registry may have in a Docker config's `auths`. */
export function credentialKeys(registry: string): string[] {
  return registry === DOCKER_HUB
    ? ["https://index.docker.io/v1/", "index.docker.io", DOCKER_HUB, DOCKER_HUB_API]
    : [registry];
}
