import { copyFile, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { parse, stringify } from "yaml";
import { K8slabError } from "../errors.js";
import { withLock } from "../lab-dir/lock.js";

interface Named {
  name: string;
  [key: string]: unknown;
}

interface KubeConfig {
  apiVersion?: string;
  kind?: string;
  clusters?: Named[];
  contexts?: Named[];
  users?: Named[];
  "current-context"?: string;
  [key: string]: unknown;
}

/** The kubeconfig `kubectl` uses: the first path of KUBECONFIG, else ~/.kube/config. */
export function userKubeconfigPath(env: NodeJS.ProcessEnv): string {
  const first = env.KUBECONFIG?.split(delimiter).find(Boolean);
  return first ?? join(env.HOME || homedir(), ".kube", "config");
}

function names(list: Named[] | undefined): Set<string> {
  return new Set((list ?? []).map((x) => x.name));
}

/**
 * Add the lab's cluster, user and context to the user's kubeconfig, replacing entries of the same
 * names and keeping everything else; the previous file is kept as a backup first.
 */
export const mergeKubeconfig: typeof mergeUnlocked = (lab, target, now) =>
  withLock(`${target}.k8slab-lock`, "kubeconfig --merge", () => mergeUnlocked(lab, target, now), {
    dirMode: 0o700,
  });
async function mergeUnlocked(
  labKubeconfig: string,
  target: string,
  now = new Date(),
): Promise<{ target: string; backup?: string; context: string }> {
  const lab = parse(await readFile(labKubeconfig, "utf8")) as KubeConfig;
  let existing: KubeConfig = {
    apiVersion: "v1",
    kind: "Config",
    clusters: [],
    contexts: [],
    users: [],
  };
  let backup: string | undefined;
  let text: string | undefined;
  try {
    text = await readFile(target, "utf8");
  } catch {
    text = undefined;
  }
  if (text !== undefined && text.trim() !== "") {
    try {
      existing = (parse(text) as KubeConfig | null) ?? existing;
    } catch (error) {
      throw new K8slabError(`${target} is not valid YAML; not touching it`, {
        hint: "fix or move it, then run k8slab kubeconfig --merge again",
        cause: error,
      });
    }
    backup = `${target}.k8slab-backup-${now.toISOString().replace(/[:.]/g, "-")}`;
    await copyFile(target, backup);
  }
  const merge = (key: "clusters" | "contexts" | "users") => {
    const replace = names(lab[key]);
    return [...(existing[key] ?? []).filter((x) => !replace.has(x.name)), ...(lab[key] ?? [])];
  };
  const context = lab["current-context"] ?? lab.contexts?.[0]?.name ?? "";
  const merged: KubeConfig = {
    ...existing,
    apiVersion: existing.apiVersion ?? "v1",
    kind: existing.kind ?? "Config",
    clusters: merge("clusters"),
    contexts: merge("contexts"),
    users: merge("users"),
    "current-context": existing["current-context"] || context,
  };
  await mkdir(dirname(target), { recursive: true, mode: 0o700 });
  const tmp = `${target}.k8slab-tmp`;
  await writeFile(tmp, stringify(merged), { mode: 0o600 });
  await rename(tmp, target);
  return { target, ...(backup ? { backup } : {}), context };
}
