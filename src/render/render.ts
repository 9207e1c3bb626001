import { readFile } from "node:fs/promises";
import { join } from "node:path";
import ejs from "ejs";
import type { LabPlan, NodePlan, Phase } from "../plan/plan.js";
import { packageRoot } from "../util/package-root.js";
import { rubyQuote, shellQuote } from "../util/quote.js";

/** One rendered file, relative to the lab directory. */
export interface RenderedFile {
  path: string;
  content: string;
  mode: number;
}

export function templatesDir(): string {
  return join(packageRoot(), "vagrant-templates");
}

/** Where a node's script for a phase lives inside the lab directory. */
export function scriptPath(node: Pick<NodePlan, "name">, phase: Phase): string {
  return `provision/${node.name}/${phase}.sh`;
}

/** Where a node's reset script lives inside the lab directory. */
export function resetScriptPath(node: Pick<NodePlan, "name">): string {
  return `provision/${node.name}/reset.sh`;
}

async function renderTemplate(
  name: string,
  data: Record<string, unknown>,
  escape: (value: unknown) => string,
): Promise<string> {
  const filename = join(templatesDir(), name);
  const template = await readFile(filename, "utf8");
  const out = ejs.render(template, data, {
    filename,
    escape,
    async: false,
    strict: true,
    localsName: "it",
    rmWhitespace: false,
  });
  return toLf(out);
}

/** LF only, one trailing newline, no trailing spaces: byte-identical on every host. */
function toLf(text: string): string {
  return `${text
    .replace(/\r\n?/g, "\n")
    .split("\n")
    .map((l) => l.trimEnd())
    .join("\n")
    .replace(/\n{3,}/g, "\n\n")
    .trimEnd()}\n`;
}

/** Render the Vagrantfile and every node's phase scripts; writes nothing. */
export async function renderLab(plan: LabPlan, meta: { labFile: string }): Promise<RenderedFile[]> {
  const files: RenderedFile[] = [];
  const common = { plan, lab: plan.lab, labFile: meta.labFile, scriptPath };
  // An SSH lab's nodes are machines that already run: no Vagrant, so no Vagrantfile.
  if (plan.lab.provider.name !== "ssh") {
    files.push({
      path: "Vagrantfile",
      content: await renderTemplate("Vagrantfile.ejs", common, rubyQuote),
      mode: 0o644,
    });
  }
  for (const node of plan.nodes) {
    for (const phase of node.phases) {
      files.push({
        path: scriptPath(node, phase),
        content: await renderTemplate(
          `provision/${phase}.sh.ejs`,
          { ...common, node, phase },
          shellQuote,
        ),
        mode: 0o755,
      });
    }
  }
  for (const node of plan.nodes) {
    // Not a phase: `k8slab reset` runs it to undo every phase on the node.
    files.push({
      path: resetScriptPath(node),
      content: await renderTemplate(
        "provision/reset.sh.ejs",
        { ...common, node, phase: "reset" },
        shellQuote,
      ),
      mode: 0o755,
    });
  }
  files.push({
    path: "lab.json",
    content: `${JSON.stringify({ source: meta.labFile, lab: plan.lab }, null, 2)}\n`,
    mode: 0o644,
  });
  return files;
}
