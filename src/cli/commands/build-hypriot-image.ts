import { Command, InvalidArgumentError, Option } from "commander";
import type {
  BuildHypriotImageOptions,
  BuildHypriotImageResult,
} from "../../hypriot/build-image.js";
import { IMAGE_BUILDER_REF } from "../../hypriot/releases.js";
import {
  BUILDER_PROVIDERS,
  DEFAULT_KERNEL_PORT,
  VIRTUALBOX_NAT_HOST,
  LIBVIRT_BUILDER_BOX,
  LIBVIRT_HOST_ADDRESS,
} from "../../hypriot/builder-vm.js";
import { printJson, printResult, say, type CliContext } from "../context.js";
import { untilInterrupted } from "../interrupt.js";

/** The command's flags: the build's options by their flag names. */
type Flags = Pick<
  BuildHypriotImageOptions,
  | "builderDir"
  | "config"
  | "imageVersion"
  | "ref"
  | "provider"
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

const HELP = `
Values: the checkout's own versions.config, then --config over it. k8slab reads which of them the
checkout's builder/build.sh and builder/chroot-script.sh use (v1.9.0 pins the kernel with
KERNEL_BUILD and hard-codes the edge Docker channel on stretch; master installs the newest kernel
on buster and reads DOCKER_CE_CHANNEL), refuses values that cannot build, and warns about every
value the checkout will not read. --config seed-002 gives seed 002's versions (Docker 18.06.1).

Provider: the builder's Vagrantfile wants VirtualBox (box ubuntu/xenial64). Without VirtualBox, on
Linux, k8slab runs it under vagrant-libvirt (box ${LIBVIRT_BUILDER_BOX}, checkout shared over NFS)
through a Vagrantfile of its own (VAGRANT_VAGRANTFILE); the checkout is never edited.

A build replaces the checkout's versions.config while it runs and puts it back afterwards; logs,
the libvirt override and a copy of the versions.config used stay in k8slab's cache directory.`;

export function buildHypriotImageCommand(ctx: CliContext): Command {
  return new Command("build-hypriot-image")
    .description(
      "build a HypriotOS SD card image for Raspberry Pis with hypriot/image-builder-rpi in its Vagrant VM (30-60 min); prints the .img.zip and its sha256",
    )
    .option(
      "--builder-dir <dir>",
      "an image-builder-rpi checkout (default: a clone in ~/.cache/k8slab)",
    )
    .option(
      "--config <file>",
      "YAML file of versions.config values over the checkout's own, or a built-in: seed-002",
    )
    .option(
      "--image-version <version>",
      "VERSION of the image (default: k8slab-<timestamp>, new every build)",
    )
    .option("--ref <ref>", `git ref to clone when there is no checkout yet`, IMAGE_BUILDER_REF)
    .addOption(
      new Option("--provider <provider>", "Vagrant provider of the builder VM")
        .choices(["auto", ...BUILDER_PROVIDERS])
        .default("auto"),
    )
    .option(
      "--kernel-deb <file>",
      "serve this kernel .deb from this machine and build with it (KERNEL_URL)",
    )
    .option(
      "--kernel-host <address>",
      `this machine's address as the builder VM sees it (default: ${VIRTUALBOX_NAT_HOST} under VirtualBox, ${LIBVIRT_HOST_ADDRESS} under libvirt)`,
    )
    .option(
      "--kernel-bind <address>",
      `address the kernel server listens on (default: 127.0.0.1 for ${VIRTUALBOX_NAT_HOST}, else --kernel-host)`,
    )
    .option(
      "--kernel-port <port>",
      "port of the kernel server (0: any free port)",
      port,
      DEFAULT_KERNEL_PORT,
    )
    .option("--log <file>", "where the build output goes (default: in k8slab's cache directory)")
    .option(
      "--dry-run",
      "show the checkout's generation, the versions.config and every command with its environment; write and build nothing (only VBoxManage and vagrant are asked which provider is there)",
    )
    .option("--json", "print the result as JSON on stdout")
    .addHelpText("after", HELP)
    .action(async (flags: Flags) => {
      const { buildHypriotImage } = await import("../../hypriot/build-image.js");
      const { vagrantCommand } = await import("../../hypriot/builder.js");
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
            provider: flags.provider,
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
      printResult(ctx, `versions: ${result.versionsConfigCopy}`);
      for (const [k, v] of Object.entries(result.versions ?? {})) printResult(ctx, `  ${k}=${v}`);
      say(ctx, `build output: ${result.logFile}`);
      say(
        ctx,
        `the builder VM keeps running for the next build; stop it with: ${vagrantCommand(result.builderDir, result.vagrantEnv, "halt")}`,
      );
      say(
        ctx,
        `next: k8slab flash-config pi-cluster --out pi-flash --image ${result.image} (set hypriotos in the lab to the release this checkout builds)`,
      );
    });
}

function printPlan(ctx: CliContext, r: BuildHypriotImageResult): void {
  say(ctx, "dry run: nothing was written or built");
  if (r.checkout) printResult(ctx, `checkout: ${r.builderDir}: ${r.checkout.summary}`);
  else
    printResult(
      ctx,
      `checkout: ${r.builderDir} is cloned first; its versions.config gives the values`,
    );
  printResult(ctx, `provider: ${r.provider} (${r.providerReason || "none found"})`);
  if (r.vagrantOverride) {
    printResult(ctx, `would write ${r.vagrantOverride.path}:`);
    printResult(ctx, r.vagrantOverride.text.replace(/^/gm, "  ").trimEnd());
  }
  if (r.versionsConfigText) {
    printResult(
      ctx,
      `would write ${r.versionsConfig} for the build (and put the checkout's back):`,
    );
    printResult(ctx, r.versionsConfigText.replace(/^/gm, "  ").trimEnd());
  }
  for (const w of r.warnings) printResult(ctx, `warning: ${w}`);
  if (r.kernel) printResult(ctx, `kernel: would serve ${r.kernel.file} at ${r.kernel.url}`);
  printResult(ctx, "commands, in order:");
  r.plan.forEach((s, i) => {
    printResult(ctx, `  ${i + 1}. ${s.title}`);
    printResult(ctx, `     cd ${s.cwd} && ${s.command}`);
  });
  printResult(ctx, `output would go to ${r.logFile}`);
}
