import { relative } from "node:path";
import { Command } from "commander";
import { formatProblem } from "../../lab/problems.js";
import { printJson, say, type CliContext } from "../context.js";

export function renderCommand(ctx: CliContext): Command {
  return new Command("render")
    .description(
      "write the lab directory: Vagrantfile, per-VM provisioners and the PKI (kept on re-render); nothing is written when the lab is invalid",
    )
    .argument("<lab>", "a built-in lab name (see `k8slab labs`) or a path to a lab file")
    .option("-d, --dir <dir>", "lab directory (default: ./<lab name>)")
    .option("--repair", "rebuild a corrupt lab.json (and the rendered files), keeping the PKI")
    .option("--json", "print the result as JSON on stdout")
    .action(async (ref: string, opts: { dir?: string; repair?: boolean; json?: boolean }) => {
      const { renderLabDir } = await import("../../render/index.js");
      const result = await renderLabDir({
        lab: ref,
        cwd: ctx.cwd,
        dir: opts.dir,
        repair: opts.repair,
      });
      if (opts.json) {
        const { dir, labFile, files, pki, warnings } = result;
        return printJson(ctx, { name: result.lab.name, dir, labFile, files, pki, warnings });
      }
      for (const w of result.warnings) say(ctx, formatProblem(w));
      const { pki } = result;
      if (pki.created.length > 0) say(ctx, `pki: issued ${pki.created.length} certificates`);
      for (const r of pki.reissued) say(ctx, `pki: re-issued ${r.name}: ${r.reason}`);
      if (pki.removed.length > 0) say(ctx, `pki: removed ${pki.removed.join(", ")}`);
      if (pki.reused.length > 0 && pki.created.length === 0 && pki.reissued.length === 0) {
        say(ctx, `pki: kept all ${pki.reused.length} certificates`);
      }
      const shown = relative(ctx.cwd, result.dir) || ".";
      say(ctx, `rendered lab ${result.lab.name} into ${shown} (${result.files.length} files)`);
      const create = `k8slab create ${ref}${opts.dir ? ` --dir ${opts.dir}` : ""}`;
      say(
        ctx,
        result.lab.provider.name === "ssh"
          ? `next: ${create}   (an SSH lab has no Vagrantfile: k8slab provisions its machines)`
          : `next: cd ${shown} && vagrant up   (or: ${create})`,
      );
    });
}
