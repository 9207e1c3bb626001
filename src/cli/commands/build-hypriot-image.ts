import { Command, InvalidArgumentError } from "commander";
import {
  buildHypriotImage,
  type BuildHypriotImageOptions,
  type BuildHypriotImageResult,
} from "../../hypriot/build-image.js";
import { DEFAULT_KERNEL_PORT, VIRTUALBOX_NAT_HOST } from "../../hypriot/kernel-server.js";
import { IMAGE_BUILDER_REF } from "../../hypriot/builder.js";
import { printJson, printResult, say, type CliContext } from "../context.js";
import { untilInterrupted } from "../interrupt.js";

/** The command's flags: the build's options by their flag names. */
type Flags = Pick<
  BuildHypriotImageOptions,
  | "builderDir"
  | "config"
  | "imageVersion"
  | "ref"
  | "kernelDeb"
  | "kernelHost"
  | "kernelBind"
  | "kernelPort"
  | "dryRun"
> & { log?: string; json?: boolean };

function port(value: string): number {
  const n = Number(value);
  if (!/^\d{1,5}$/.test(value) || n > 65535)
    throw new InvalidArgumentError("must be a port number (0 picks a free one)");
  return n;
}

export function buildHypriotImageCommand(ctx: CliContext): Command {
  return new Command("build-hypriot-image")
    .description(
      "build a HypriotOS SD card image for Raspberry Pis with hypriot/image-builder-rpi in its Vagrant VM (30-60 min); prints the .img.zip and its sha256",
    )
    .option(
      "--builder-dir <dir>",
      "an image-builder-rpi checkout (default: a clone in ~/.cache/k8slab)",
    )
    .option("--config <file>", "YAML file of versions.config values (default: the seed's versions)")
    .option(
      "--image-version <version>",
      "VERSION of the image (default: k8slab-<timestamp>, new every build)",
    )
    .option("--ref <ref>", `git ref to clone when there is no checkout yet`, IMAGE_BUILDER_REF)
    .option(
      "--kernel-deb <file>",
      "serve this kernel .deb from this machine and build with it (KERNEL_URL)",
    )
    .option(
      "--kernel-host <address>",
      "this machine's address as the builder VM sees it",
      VIRTUALBOX_NAT_HOST,
    )
    .option(
      "--kernel-bind <address>",
      "address the kernel server listens on (default: 127.0.0.1 for 10.0.2.2, else --kernel-host)",
    )
    .option(
      "--kernel-port <port>",
      "port of the kernel server (0: any free port)",
      port,
      DEFAULT_KERNEL_PORT,
    )
    .option(
      "--log <file>",
      "where the build output goes (default: <builder-dir>/k8slab-build-<VERSION>.log)",
    )
    .option(
      "--dry-run",
      "write versions.config and print every command with its environment; run nothing",
    )
    .option("--json", "print the result as JSON on stdout")
    .action(async (flags: Flags) => {
      const result: BuildHypriotImageResult = await untilInterrupted(
        {
          message: "interrupted; the build stopped and the kernel server with it",
          hint: "the builder VM keeps running; run the same command again to build anew",
        },
        (signal) =>
          buildHypriotImage({
            cwd: ctx.cwd,
            env: ctx.env,
            signal,
            onProgress: (line) => say(ctx, line),
            builderDir: flags.builderDir,
            config: flags.config,
            imageVersion: flags.imageVersion,
            ref: flags.ref,
            kernelDeb: flags.kernelDeb,
            kernelHost: flags.kernelHost,
            kernelBind: flags.kernelBind,
            kernelPort: flags.kernelPort,
            logFile: flags.log,
            dryRun: flags.dryRun ?? false,
          }),
      );
      if (flags.json) return printJson(ctx, result);
      if (result.dryRun) return printPlan(ctx, result);
      printResult(ctx, `image:    ${result.image}`);
      printResult(ctx, `sha256:   ${result.sha256} (matches ${result.sha256File})`);
      printResult(ctx, `versions: ${result.versionsConfig}`);
      for (const [k, v] of Object.entries(result.versions)) printResult(ctx, `  ${k}=${v}`);
      say(ctx, `build output: ${result.logFile}`);
      say(
        ctx,
        `the builder VM keeps running for the next build; stop it with: cd ${result.builderDir} && vagrant halt`,
      );
      say(
        ctx,
        `next: flash it, e.g. k8slab flash-config pi-cluster --out pi-flash --image ${result.image}`,
      );
    });
}

function printPlan(ctx: CliContext, r: BuildHypriotImageResult): void {
  say(ctx, "dry run: nothing was run");
  printResult(
    ctx,
    r.versionsConfigWritten
      ? `wrote ${r.versionsConfig}:`
      : `would write ${r.versionsConfig} (not written: ${r.kernel?.url.includes(":PORT/") ? "the kernel port is chosen at run time" : "the checkout is cloned first"}):`,
  );
  printResult(ctx, r.versionsConfigText.replace(/^/gm, "  ").trimEnd());
  if (r.kernel) printResult(ctx, `kernel: would serve ${r.kernel.file} at ${r.kernel.url}`);
  printResult(ctx, "commands, in order:");
  r.plan.forEach((s, i) => {
    printResult(ctx, `  ${i + 1}. ${s.title}`);
    printResult(ctx, `     cd ${s.cwd} && ${s.command}`);
  });
  printResult(ctx, `output would go to ${r.logFile}`);
}
