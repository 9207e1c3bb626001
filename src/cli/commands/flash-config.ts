import { isAbsolute, relative } from "node:path";
import { Command } from "commander";
import { FLASH, FLASH_INSTALL, HYPHEN_NOTE } from "../../hypriot/releases.js";
import { formatProblem } from "../../lab/problems.js";
import { printJson, printResult, say, type CliContext } from "../context.js";

const HELP = `
flash (hypriot/flash ${FLASH.release}; --file needs ${FLASH.minimumForFile} or newer) writes each SD card:
  ${FLASH_INSTALL.command}
  ${FLASH_INSTALL.linux}

Several labs write one inventory (the seed keeps one "cluster" file for all its clusters):
  k8slab flash-config crew-1.yaml crew-2.yaml --out pi-flash

${HYPHEN_NOTE}.`;

export function flashConfigCommand(ctx: CliContext): Command {
  return new Command("flash-config")
    .description(
      "write cloud-init files for every board of one or more Pi cluster labs and one Ansible inventory; print the flash command for each board",
    )
    .argument(
      "<labs...>",
      "built-in Pi cluster labs (pi-cluster) or paths to lab files with kind: pi-cluster",
    )
    .requiredOption(
      "-o, --out <dir>",
      "directory for <hostname>/user-data, meta-data (and network-config) and the inventory",
    )
    .option("--image <file>", "the image the flash commands write (default: each lab's image)")
    .option("--json", "print the result as JSON on stdout")
    .addHelpText("after", HELP)
    .action(async (refs: string[], opts: { out: string; image?: string; json?: boolean }) => {
      const { writeFlashConfig } = await import("../../hypriot/flash-config.js");
      const result = await writeFlashConfig({
        labs: refs,
        cwd: ctx.cwd,
        env: ctx.env,
        out: opts.out,
        ...(opts.image !== undefined ? { image: opts.image } : {}),
      });
      if (opts.json) {
        const { clusters, out, inventory, boards, warnings } = result;
        return printJson(ctx, {
          clusters: clusters.map(({ lab, ...c }) => ({ name: lab.name, ...c })),
          out,
          inventory,
          boards,
          warnings,
        });
      }
      for (const w of result.warnings) say(ctx, formatProblem(w));
      const shown = (p: string) => {
        const r = relative(ctx.cwd, p);
        return r === "" ? "." : r.startsWith("..") || isAbsolute(r) ? p : r;
      };
      say(
        ctx,
        `wrote cloud-init files for ${result.boards.length} boards and the inventory ${shown(result.inventory)} into ${shown(result.out)}`,
      );
      for (const c of result.clusters) {
        say(
          ctx,
          `${c.lab.name}: HypriotOS ${c.release}, eth0 by ${c.method}, image ${c.image}${c.imageUrl ? ` (download: curl -LO ${c.imageUrl})` : ""}`,
        );
      }
      say(ctx, "flash each SD card (one command per board):");
      for (const b of result.boards) printResult(ctx, b.flash);
      say(ctx, `get flash: ${FLASH_INSTALL.command}`);
      say(ctx, `(${FLASH_INSTALL.linux})`);
      say(
        ctx,
        `then: ansible -u ${result.clusters[0]?.lab.user.name ?? "pirate"} -i ${shown(result.inventory)} -m ping all`,
      );
      say(ctx, `(${HYPHEN_NOTE})`);
    });
}
