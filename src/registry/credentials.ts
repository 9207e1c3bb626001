import { readFile, rm } from "node:fs/promises";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { K8slabError } from "../errors.js";
import { writeFileAtomic } from "../lab-dir/files.js";
import type { Lab } from "../lab/schema.js";
import { nodeBundleDir } from "../pki/index.js";

/**
 * A private registry's credentials (seed 003). The lab file names where the password is (an
 * environment variable or a file of the host); it is read when the nodes are provisioned, put
 * into each node's own bundle as Docker's config.json, and installed by the pki phase as
 * /root/.docker/config.json (0600). It is never in a rendered script, a log, state.json or an
 * error message: messages name the variable or the file, never what they hold.
 */

/** The name of the file in a node's bundle; the pki phase installs it for Docker. */
export const DOCKER_CONFIG_BUNDLE_FILE = "docker-config.json";
/** Where the pki phase puts it on the node. */
export const DOCKER_CONFIG_PATH = "/root/.docker/config.json";
/** The image pull secret the addons phase creates, where the lab asks for one. */
export const PULL_SECRET_NAME = "k8slab-registry";

export type Registry = NonNullable<Lab["registry"]>;

export interface CredentialSource {
  env: NodeJS.ProcessEnv;
  /** The lab file's folder: a relative passwordFile is read from there. */
  labFileDir: string;
  /** How to name the lab in hints. */
  labRef?: string | undefined;
}

/** The namespaces that get a pull secret: none, default, or the lab's list. */
export function pullSecretNamespaces(registry: Registry | undefined): string[] {
  if (!registry || registry.pullSecret === false) return [];
  return registry.pullSecret === true ? ["default"] : registry.pullSecret;
}

/** Read the registry password on the host; errors say where it was looked for, never a value. */
export async function readRegistryPassword(
  registry: Registry,
  source: CredentialSource,
): Promise<string> {
  if (registry.passwordEnv !== undefined) {
    const value = source.env[registry.passwordEnv];
    if (value === undefined || value === "") {
      throw new K8slabError(
        `the password of registry ${registry.server} is read from the environment variable ${registry.passwordEnv}, which is not set`,
        {
          hint: `export ${registry.passwordEnv} (read -rs ${registry.passwordEnv} && export ${registry.passwordEnv}), then run the command again`,
        },
      );
    }
    return value;
  }
  const file = registry.passwordFile ?? "";
  const path = isAbsolute(file) ? file : resolve(source.labFileDir, file);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "unreadable";
    throw new K8slabError(
      `cannot read the password of registry ${registry.server} from ${path} (${code})`,
      { hint: `put the password in ${path} (chmod 600), or use passwordEnv in the lab file` },
    );
  }
  const password = text.replace(/\r?\n$/, "");
  if (password === "" || /[\r\n]/.test(password)) {
    throw new K8slabError(
      `${path} must hold the password of registry ${registry.server} on one line`,
      { hint: `write only the password into ${path}` },
    );
  }
  return password;
}

/** Docker's config.json with one `auths` entry: base64 of user:password. */
export function dockerConfigJson(registry: Registry, password: string): string {
  const auth = Buffer.from(`${registry.username}:${password}`, "utf8").toString("base64");
  return `${JSON.stringify({ auths: { [registry.server]: { auth } } }, null, 2)}\n`;
}

/**
 * Put Docker's config.json into every node's bundle (or take it out when the lab has no
 * registry any more). Run when the nodes are provisioned: the password is read now.
 */
export async function stageRegistryCredentials(
  labDir: string,
  lab: Pick<Lab, "registry" | "nodes">,
  source: CredentialSource,
): Promise<{ staged: string[] }> {
  const files = lab.nodes.map((n) =>
    join(nodeBundleDir(labDir, n.name), DOCKER_CONFIG_BUNDLE_FILE),
  );
  if (!lab.registry) {
    await Promise.all(files.map((f) => rm(f, { force: true })));
    return { staged: [] };
  }
  const config = dockerConfigJson(lab.registry, await readRegistryPassword(lab.registry, source));
  for (const file of files) await writeFileAtomic(file, config, 0o600);
  return { staged: lab.nodes.map((n) => n.name) };
}

/**
 * Where a rendered lab's file was: lab.json records it as it was named, relative to where
 * `render` or `create` ran, which is the lab directory's parent unless --dir put it elsewhere.
 */
export async function labFileDirOf(labDir: string): Promise<string> {
  try {
    const saved = JSON.parse(await readFile(join(labDir, "lab.json"), "utf8")) as {
      source?: unknown;
    };
    if (typeof saved.source === "string") return dirname(resolve(dirname(labDir), saved.source));
  } catch {
    // openLab has read it already; a lab.json gone since leaves the parent folder.
  }
  return dirname(labDir);
}
