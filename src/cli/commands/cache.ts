import { Command } from "commander";
import type { PullProgress } from "../../artifacts/index.js";
import { downloadNarrator } from "../../artifacts/progress-text.js";
import { formatProblem } from "../../lab/problems.js";
import { printJson, printResult, say, type CliContext } from "../context.js";

/** Progress lines for downloads, on stderr. */
export function downloadReporter(ctx: CliContext): (p: PullProgress) => void {
  const narrate = downloadNarrator(ctx.interactive);
  return (p) => {
    const line = narrate(p);
    if (line) say(ctx, line);
  };
}

export function cacheCommand(ctx: CliContext): Command {
  const cache = new Command("cache").description(
    "the per-user download cache: each artifact is downloaded once per host, verified, and served to the VMs",
  );
  cache
    .command("pull")
    .description(
      "download every artifact a lab lists into the cache and verify its sha256, and pull every image its nodes run (linux/amd64, by digest) from its registry",
    )
    .argument("<lab>", "a built-in lab name or a path to a lab file")
    .option(
      "--pin",
      "accepted for compatibility: an artifact without a sha256 in the lab file always has the first download's recorded",
    )
    .option("--json", "print the result as JSON on stdout")
    .action(async (ref: string, opts: { json?: boolean }) => {
      const { cachePull } = await import("../../artifacts/index.js");
      const result = await cachePull({
        lab: ref,
        cwd: ctx.cwd,
        env: ctx.env,
        onProgress: downloadReporter(ctx),
      });
      if (opts.json) return printJson(ctx, result);
      for (const w of result.warnings) say(ctx, formatProblem(w));
      say(
        ctx,
        `${result.artifacts.length} artifacts and ${result.images.length} images ready in ${result.cache}`,
      );
    });
  cache
    .command("dir")
    .description("print the cache directory (K8SLAB_CACHE, else $XDG_CACHE_HOME/k8slab)")
    .action(async () => {
      const { cacheDir } = await import("../../artifacts/index.js");
      printResult(ctx, cacheDir(ctx.env));
    });
  return cache;
}
