import { Command } from "commander";
import { cacheDir, cachePull, type PullProgress } from "../../artifacts/index.js";
import { formatProblem } from "../../lab/problems.js";
import { printJson, printResult, say, type CliContext } from "../context.js";

const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;

/** Progress lines for downloads: every event on a terminal, at most one line per 10% otherwise. */
export function downloadReporter(ctx: CliContext): (p: PullProgress) => void {
  const lastDecile = new Map<string, number>();
  return (p) => {
    switch (p.event) {
      case "cached":
        return say(ctx, `${p.name}: in the cache, sha256 verified (${mb(p.total ?? 0)})`);
      case "damaged":
        return say(
          ctx,
          `${p.name}: the cached copy is damaged (${p.message}); downloading it again`,
        );
      case "recorded":
        return say(
          ctx,
          `${p.name}: its upstream publishes no sha256; recorded the first download's: ${p.sha256} (every later use must match it)`,
        );
      case "start":
        return say(ctx, `${p.name}: downloading`);
      case "retry":
        return say(ctx, `${p.name}: ${p.message ?? "retrying"}`);
      case "done":
        return say(ctx, `${p.name}: downloaded and verified (${mb(p.received ?? 0)})`);
      case "progress": {
        if (!p.total) return undefined;
        const decile = Math.floor(((p.received ?? 0) / p.total) * 10);
        if (!ctx.interactive && decile === lastDecile.get(p.name)) return undefined;
        lastDecile.set(p.name, decile);
        return say(ctx, `${p.name}: ${mb(p.received ?? 0)} of ${mb(p.total)}`);
      }
    }
  };
}

export function cacheCommand(ctx: CliContext): Command {
  const cache = new Command("cache").description(
    "the per-user download cache: each artifact is downloaded once per host, verified, and served to the VMs",
  );
  cache
    .command("pull")
    .description("download every artifact a lab lists into the cache and verify its sha256")
    .argument("<lab>", "a built-in lab name or a path to a lab file")
    .option(
      "--pin",
      "accepted for compatibility: an artifact without a sha256 in the lab file always has the first download's recorded",
    )
    .option("--json", "print the result as JSON on stdout")
    .action(async (ref: string, opts: { json?: boolean }) => {
      const result = await cachePull({
        lab: ref,
        cwd: ctx.cwd,
        env: ctx.env,
        onProgress: downloadReporter(ctx),
      });
      if (opts.json) return printJson(ctx, result);
      for (const w of result.warnings) say(ctx, formatProblem(w));
      say(ctx, `${result.artifacts.length} artifacts ready in ${result.cache}`);
    });
  cache
    .command("dir")
    .description("print the cache directory (K8SLAB_CACHE, else $XDG_CACHE_HOME/k8slab)")
    .action(() => printResult(ctx, cacheDir(ctx.env)));
  return cache;
}
