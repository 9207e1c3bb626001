import { isDeepStrictEqual } from "node:util";
import { copyFile, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { Document, isMap, isSeq, parse, parseDocument } from "yaml";
import { K8slabError } from "../errors.js";
import { withLock } from "../lab-dir/lock.js";

type Entry = Record<string, unknown>;
type Kind = "clusters" | "users" | "contexts";
/** The field of a named entry that holds its body: `clusters[].cluster`, `users[].user`... */
const BODY: Record<Kind, "cluster" | "user" | "context"> = {
  clusters: "cluster",
  users: "user",
  contexts: "context",
};
const KINDS: readonly Kind[] = ["clusters", "users", "contexts"];

/** The extension k8slab puts in every entry it merges (minikube marks its own with `cluster_info`). */
export const K8SLAB_EXTENSION = "k8slab";

/** The kubeconfig `kubectl` uses: the first path of KUBECONFIG, else ~/.kube/config. */
export function userKubeconfigPath(env: NodeJS.ProcessEnv): string {
  const first = env.KUBECONFIG?.split(delimiter).find(Boolean);
  return first ?? join(env.HOME || homedir(), ".kube", "config");
}

/** The name of a lab's cluster, user and context in the user's kubeconfig (kind: `kind-<name>`). */
export function mergedName(lab: string): string {
  return `k8slab-${lab}`;
}

export interface MergeOptions {
  /** The lab's name (default: the lab kubeconfig's current context, which is the lab's name). */
  lab?: string | undefined;
  now?: Date | undefined;
}

export interface MergeResult {
  target: string;
  backup?: string;
  /** The context added (also the cluster's and the user's name). */
  context: string;
}

/**
 * Add the lab's cluster, user and context to the user's kubeconfig as `k8slab-<lab>`, keeping a
 * backup of the previous file. Nothing else in the file changes: other entries, their order and
 * comments stay; only a `k8slab-<lab>` entry that k8slab wrote is replaced (see `isOurs`).
 */
export const mergeKubeconfig = (
  labKubeconfig: string,
  target: string,
  options: MergeOptions = {},
): Promise<MergeResult> =>
  withLock(
    `${target}.k8slab-lock`,
    "kubeconfig --merge",
    () => mergeUnlocked(labKubeconfig, target, options),
    { dirMode: 0o700 },
  );

function entriesOf(config: unknown, kind: Kind): Entry[] {
  const list = (config as Record<string, unknown> | null)?.[kind];
  return Array.isArray(list) ? (list as Entry[]) : [];
}

function body(entry: Entry, kind: Kind): Entry {
  const value = entry[BODY[kind]];
  return value && typeof value === "object" ? (value as Entry) : {};
}

function withoutExtensions(entry: Entry, kind: Kind): Entry {
  const rest = { ...body(entry, kind) };
  delete rest.extensions;
  return { ...entry, [BODY[kind]]: rest };
}

/**
 * Whether an existing entry named `k8slab-<lab>` was written by k8slab for this lab, so it may be
 * replaced. Names alone prove nothing (someone may call their own cluster that), so one of:
 * - it carries k8slab's extension naming this lab (every entry k8slab merges has it; kubectl keeps
 *   extensions when it rewrites the file);
 * - it equals, extensions aside, what this merge writes (a tool that dropped the extension);
 * - for the cluster: its CA is this lab's CA (the same lab, merged before the extension existed).
 * Anything else is the user's, and the merge is refused rather than replacing it.
 */
function isOurs(existing: Entry, ours: Entry, kind: Kind, lab: string): boolean {
  const extensions = body(existing, kind).extensions;
  if (
    Array.isArray(extensions) &&
    extensions.some(
      (x: unknown) =>
        (x as Entry | null)?.name === K8SLAB_EXTENSION &&
        ((x as Entry).extension as Entry | null)?.lab === lab,
    )
  ) {
    return true;
  }
  if (isDeepStrictEqual(withoutExtensions(existing, kind), withoutExtensions(ours, kind))) {
    return true;
  }
  const ca = body(existing, kind)["certificate-authority-data"];
  return (
    kind === "clusters" &&
    typeof ca === "string" &&
    ca === body(ours, kind)["certificate-authority-data"]
  );
}

/** The lab's own entries, renamed to `k8slab-<lab>` and marked as k8slab's. */
function labEntries(labConfig: unknown, lab: string): Record<Kind, Entry> {
  const name = mergedName(lab);
  const contextName = (labConfig as Entry | null)?.["current-context"];
  const context =
    entriesOf(labConfig, "contexts").find((c) => c.name === contextName) ??
    entriesOf(labConfig, "contexts")[0];
  const ctx = context ? body(context, "contexts") : {};
  const cluster = entriesOf(labConfig, "clusters").find((c) => c.name === ctx.cluster);
  const user = entriesOf(labConfig, "users").find((u) => u.name === ctx.user);
  if (!context || !cluster || !user) {
    throw new K8slabError(`the lab's kubeconfig has no context with its cluster and user`, {
      hint: "render the lab again: k8slab render <lab> --dir <dir>",
    });
  }
  const extensions = [{ name: K8SLAB_EXTENSION, extension: { lab } }];
  const entry = (kind: Kind, content: Entry): Entry => ({
    name,
    [BODY[kind]]: { ...content, extensions },
  });
  return {
    clusters: entry("clusters", body(cluster, "clusters")),
    users: entry("users", body(user, "users")),
    contexts: entry("contexts", { cluster: name, user: name }),
  };
}

async function mergeUnlocked(
  labKubeconfig: string,
  target: string,
  options: MergeOptions,
): Promise<MergeResult> {
  const labConfig = parse(await readFile(labKubeconfig, "utf8")) as unknown;
  const lab = options.lab ?? String((labConfig as Entry | null)?.["current-context"] ?? "").trim();
  if (!lab) throw new K8slabError(`${labKubeconfig} names no lab (no current-context)`);
  const name = mergedName(lab);
  const ours = labEntries(labConfig, lab);

  let text: string | undefined;
  try {
    text = await readFile(target, "utf8");
  } catch {
    text = undefined;
  }
  // YAML 1.1, as kubectl reads it: values written back mean to kubectl what they meant before.
  let doc: Document;
  if (text === undefined || text.trim() === "") {
    doc = new Document({ apiVersion: "v1", kind: "Config" }, { version: "1.1" });
  } else {
    doc = parseDocument(text, { version: "1.1" });
    if (doc.errors.length > 0 || (doc.contents !== null && !isMap(doc.contents))) {
      throw new K8slabError(`${target} is not a valid kubeconfig (YAML map); not touching it`, {
        hint: "fix or move it, then run k8slab kubeconfig --merge again",
        ...(doc.errors[0] ? { cause: doc.errors[0] } : {}),
      });
    }
  }
  const existing = doc.toJS() as Entry | null;
  const foreign: string[] = [];
  for (const kind of KINDS) {
    for (const entry of entriesOf(existing, kind)) {
      if (entry.name === name && !isOurs(entry, ours[kind], kind, lab)) {
        foreign.push(`${BODY[kind]} ${name}`);
      }
    }
  }
  if (foreign.length > 0) {
    throw new K8slabError(
      `${target} already has a ${foreign.join(", a ")} that k8slab did not write; not replacing it`,
      {
        exitCode: 2,
        hint: `rename or remove it (kubectl config rename-context, delete-context, delete-cluster, delete-user), or merge into another file: KUBECONFIG=<file> k8slab kubeconfig --merge`,
      },
    );
  }

  let backup: string | undefined;
  if (text !== undefined && text.trim() !== "") {
    const now = options.now ?? new Date();
    backup = `${target}.k8slab-backup-${now.toISOString().replace(/[:.]/g, "-")}`;
    await copyFile(target, backup);
  }
  if (doc.contents === null) doc.contents = doc.createNode({});
  if (!doc.has("apiVersion")) doc.set("apiVersion", "v1");
  if (!doc.has("kind")) doc.set("kind", "Config");
  for (const kind of KINDS) {
    let list = doc.get(kind, true);
    if (!isSeq(list)) {
      list = doc.createNode([]);
      doc.set(kind, list);
    }
    const seq = list as { items: unknown[] };
    // Only this lab's own earlier entries go; every other item stays as it was, node and all.
    const keep = seq.items.filter((_, i) => entriesOf(existing, kind)[i]?.name !== name);
    seq.items = [...keep, doc.createNode(ours[kind])];
  }
  if (!existing?.["current-context"]) doc.set("current-context", name);
  await mkdir(dirname(target), { recursive: true, mode: 0o700 });
  const tmp = `${target}.k8slab-tmp`;
  await writeFile(tmp, doc.toString({ indentSeq: false, lineWidth: 0 }), { mode: 0o600 });
  await rename(tmp, target);
  return { target, ...(backup ? { backup } : {}), context: name };
}
