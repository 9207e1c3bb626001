import { existsSync } from "node:fs";
import { join } from "node:path";
import pMap from "p-map";
import { readState, writeState } from "../converge/state.js";
import { K8slabError } from "../errors.js";
import { withLabLock } from "../lab-dir/lock.js";
import type { OpenLab } from "../lifecycle/open-lab.js";
import { resetScriptPath } from "../render/render.js";

/**
 * `k8slab reset`: undo what the phases installed on every node of a lab (seed 002's reset.yml),
 * by running each node's rendered provision/<node>/reset.sh on it, so that the machines can be
 * used again. The lab directory (PKI, logs) stays; what state.json recorded for a node that was
 * reset goes, so the next `create` runs every phase there again.
 */

/**
 * The one thing reset needs of the lab's machine layer: run a script of the lab directory
 * (a path relative to it) on a node as root, throwing when it fails: the lab's Machines run it
 * as their "reset" provisioner (provisionerResetRunner).
 */
export interface ScriptRunner {
  runScript(node: string, labDirPath: string): Promise<void>;
}

export interface ResetOptions {
  runner: ScriptRunner;
  /** Only these nodes (default: every node of the lab). */
  nodes?: readonly string[] | undefined;
  /** Nodes reset at once. */
  concurrency?: number;
  onNode?: (event: { node: string; status: "start" | "done" | "failed"; error?: string }) => void;
}

export interface ResetResult {
  reset: string[];
  failed: { node: string; error: string }[];
}

export function resetLab(open: OpenLab, options: ResetOptions): Promise<ResetResult> {
  return withLabLock(open.dir, "reset", () => resetUnlocked(open, options));
}

async function resetUnlocked(open: OpenLab, options: ResetOptions): Promise<ResetResult> {
  const known = open.plan.nodes.map((n) => n.name);
  const unknown = (options.nodes ?? []).filter((n) => !known.includes(n));
  if (unknown.length > 0) {
    throw new K8slabError(`lab ${open.lab.name} has no node ${unknown.join(", ")}`, {
      exitCode: 2,
      hint: `nodes: ${known.join(", ")}`,
    });
  }
  const targets = open.plan.nodes.filter((n) => !options.nodes || options.nodes.includes(n.name));
  const missing = targets.filter((n) => !existsSync(join(open.dir, resetScriptPath(n))));
  if (missing.length > 0) {
    throw new K8slabError(
      `${open.dir} has no reset script for ${missing.map((n) => n.name).join(", ")} (rendered by an older k8slab)`,
      { hint: `render the lab again (the PKI stays): k8slab render <lab> --dir ${open.dir}` },
    );
  }
  const emit = options.onNode ?? (() => {});
  const result: ResetResult = { reset: [], failed: [] };
  await pMap(
    targets,
    async (node) => {
      emit({ node: node.name, status: "start" });
      try {
        await options.runner.runScript(node.name, resetScriptPath(node));
        result.reset.push(node.name);
        emit({ node: node.name, status: "done" });
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        result.failed.push({ node: node.name, error: message });
        emit({ node: node.name, status: "failed", error: message });
      }
    },
    { concurrency: options.concurrency ?? 4 },
  );
  result.reset.sort();
  // A reset node has none of its phases any more, and no stage holds as verified.
  const { state } = await readState(open.dir, open.lab.name, { setAside: true });
  for (const node of result.reset) delete state.phases[node];
  if (result.reset.length > 0) state.stages = {};
  await writeState(open.dir, state);
  if (result.failed.length > 0) {
    throw new K8slabError(
      `reset failed on ${result.failed.map((f) => f.node).join(", ")}: ${result.failed.map((f) => `${f.node}: ${f.error}`).join("; ")}`,
      {
        hint: `the logs are in ${join(open.dir, "logs")}; reset runs again safely (k8slab reset ${open.lab.name} --dir ${open.dir})`,
        details: { reset: result.reset, failed: result.failed.map((f) => f.node) },
      },
    );
  }
  return result;
}

/**
 * The lab's machines run the script as the "reset" provisioner: Vagrant's is declared with
 * run: "never" in the Vagrantfile (only an explicit --provision-with runs it); the SSH provider
 * uploads provision/<node>/ and runs reset.sh as root.
 */
export function provisionerResetRunner(machines: {
  provision(machine: string, provisioners: string[]): Promise<void>;
}): ScriptRunner {
  return { runScript: (node) => machines.provision(node, ["reset"]) };
}
