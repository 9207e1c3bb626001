import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { K8slabError } from "../errors.js";
import { credentialKeys } from "./reference.js";

export interface Credentials {
  username: string;
  password: string;
}

/** What k8slab reads of a Docker client configuration (`docker login` writes it). */
export interface DockerConfig {
  path: string;
  /** Registry host[:port] -> credentials, from `auths`. */
  auths: Map<string, Credentials>;
  /** Set when `docker login` keeps credentials in a helper (credsStore/credHelpers) instead. */
  helpers: string[];
}

/** `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, as the Docker CLI reads it. */
export function dockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.DOCKER_CONFIG || join(env.HOME || homedir(), ".docker"), "config.json");
}

/** `auths` keys may be a host, a URL (https://host/v1/) or carry a scheme: keep host[:port]. */
function hostOf(key: string): string {
  return key.replace(/^[a-z]+:\/\//i, "").replace(/\/.*$/, "");
}

function decodeAuth(path: string, key: string, entry: Record<string, unknown>): Credentials {
  if (typeof entry.auth === "string" && entry.auth !== "") {
    const plain = Buffer.from(entry.auth, "base64").toString("utf8");
    const colon = plain.indexOf(":");
    if (colon > 0) return { username: plain.slice(0, colon), password: plain.slice(colon + 1) };
  } else if (typeof entry.username === "string" && typeof entry.password === "string") {
    return { username: entry.username, password: entry.password };
  }
  throw new K8slabError(`${path}: auths entry ${JSON.stringify(key)} holds no user:password`, {
    hint: `log in again: docker login ${hostOf(key)}`,
  });
}

/** Read a Docker config; a missing file is an empty one. */
export async function readDockerConfig(path: string): Promise<DockerConfig> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      return { path, auths: new Map(), helpers: [] };
    }
    throw error;
  }
  let json: { auths?: Record<string, Record<string, unknown>>; [k: string]: unknown };
  try {
    json = JSON.parse(text) as typeof json;
  } catch (error) {
    throw new K8slabError(`${path} is not valid JSON`, {
      hint: "fix or remove the file (docker login writes it)",
      cause: error,
    });
  }
  const auths = new Map<string, Credentials>();
  for (const [key, entry] of Object.entries(json.auths ?? {})) {
    // An empty entry is what `docker login` leaves when a credential helper holds the secret.
    if (Object.keys(entry ?? {}).length === 0) continue;
    auths.set(hostOf(key), decodeAuth(path, key, entry));
  }
  const helpers = [
    ...(typeof json.credsStore === "string" ? [json.credsStore] : []),
    ...Object.values((json.credHelpers as Record<string, string> | undefined) ?? {}),
  ];
  return { path, auths, helpers };
}

export function credentialsFor(config: DockerConfig, registry: string): Credentials | undefined {
  for (const key of credentialKeys(registry)) {
    const found = config.auths.get(hostOf(key));
    if (found) return found;
  }
  return undefined;
}
