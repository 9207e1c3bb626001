import { resolve } from "node:path";
import { Command, Option } from "commander";
import type { PullProgress } from "../../artifacts/index.js";
import { downloadNarrator, mb, progressLines } from "../../artifacts/progress-text.js";
import type { BundleProgress } from "../../bundle/bundle.js";
import { formatProblem } from "../../lab/problems.js";
import { VAGRANT_PROVIDERS } from "../../lab/providers.js";
import { printJson, printResult, say, type CliContext } from "../context.js";
import { untilInterrupted } from "../interrupt.js";

/** Progress lines for downloads, on stderr. */
export function downloadReporter(ctx: CliContext): (p: PullProgress) => void {
  const narrate = downloadNarrator(ctx.interactive);
  return (p) => {
    const line = narrate(p);
    if (line) say(ctx, line);
  };
}

/** Progress lines for a bundle's files, on stderr. */
function bundleReporter(ctx: CliContext, verb: string): (p: BundleProgress) => void {
  const progress = progressLines(ctx.interactive);
  return (p) => {
    const line =
      p.event === "start"
        ? `${verb} ${p.name}${p.total ? ` (${mb(p.total)})` : ""}`
        : p.event === "progress"
          ? progress(p.name, p.done ?? 0, p.total)
          : undefined;
    if (line) say(ctx, line);
  };
}

export function cacheCommand(ctx: CliContext): Command {
  const cache = new Command("cache").description(
    "the per-user download cache: each artifact and image is downloaded once per host, verified, and served to the VMs; export and import carry a lab's share of it to machines with no internet",
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
    .command("export")
    .description(
      "write everything a lab needs into one file (for a USB stick): its artifacts and images from the cache, their checksums, the lab file, and the Vagrant box when Vagrant has it; nothing is downloaded",
    )
    .argument("<lab>", "a built-in lab name or a path to a lab file")
    .argument("<file>", "the bundle to write (replaced only once it is complete)")
    .addOption(
      new Option("--provider <name>", "whose box to include (default: the lab's provider)").choices(
        VAGRANT_PROVIDERS,
      ),
    )
    .option("--no-box", "leave the Vagrant box out")
    .option("--json", "print the result as JSON on stdout")
    .action(
      async (
        ref: string,
        file: string,
        opts: { provider?: (typeof VAGRANT_PROVIDERS)[number]; box: boolean; json?: boolean },
      ) => {
        const [{ cacheDir }, { exportBundle }] = await Promise.all([
          import("../../artifacts/index.js"),
          import("../../bundle/bundle.js"),
        ]);
        const result = await untilInterrupted(
          { message: "export interrupted; no bundle was written", hint: "run it again" },
          (signal) =>
            exportBundle({
              lab: ref,
              cwd: ctx.cwd,
              cache: cacheDir(ctx.env),
              env: ctx.env,
              file: resolve(ctx.cwd, file),
              box: opts.box ? opts.provider : false,
              onProgress: bundleReporter(ctx, "adding"),
              signal,
            }),
        );
        if (opts.json) return printJson(ctx, result);
        for (const w of result.warnings) say(ctx, formatProblem(w));
        const box = result.box
          ? `, box ${result.box.name} ${result.box.version} (${result.box.provider})`
          : ", no box";
        say(
          ctx,
          `wrote ${result.file} (${mb(result.size)}): lab ${result.lab}, ${result.artifacts} artifacts, ${result.images} images${box}`,
        );
        say(ctx, `on another machine: k8slab cache import ${file}`);
      },
    );
  cache
    .command("import")
    .description(
      "verify a bundle made by cache export and load it: artifacts and images into the cache, the box into Vagrant (vagrant box add); the lab can then be created with no internet",
    )
    .argument("<file>", "the bundle")
    .option("--json", "print the result as JSON on stdout")
    .action(async (file: string, opts: { json?: boolean }) => {
      const [{ cacheDir }, { importBundle }] = await Promise.all([
        import("../../artifacts/index.js"),
        import("../../bundle/bundle.js"),
      ]);
      const result = await untilInterrupted(
        {
          message: "import interrupted; the cache holds only complete, verified files",
          hint: "run it again",
        },
        (signal) =>
          importBundle({
            file: resolve(ctx.cwd, file),
            cache: cacheDir(ctx.env),
            env: ctx.env,
            onProgress: bundleReporter(ctx, "verifying"),
            onLine: (line) => say(ctx, `  ${line}`),
            signal,
          }),
      );
      if (opts.json) return printJson(ctx, result);
      const box = {
        added: "box added to Vagrant",
        present: "box already in Vagrant",
        none: "no box in the bundle",
      }[result.box];
      say(
        ctx,
        `imported ${result.artifacts} artifacts and ${result.images} images into ${result.cache}; ${box}`,
      );
      say(ctx, `create the lab with: k8slab create ${result.labFile}`);
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
