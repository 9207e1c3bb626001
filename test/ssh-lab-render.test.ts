import { describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { renderLabDir } from "../src/render/index.js";
import { editedLab } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";

/** What rendering gives a lab whose nodes are existing machines reached over SSH (issue 15). */
describe("render an SSH lab", () => {
  const tmp = useTmpDirs();

  it("writes the phase scripts, PKI and lab.json but no Vagrantfile, and hints in k8slab's words", async () => {
    const cwd = await tmp();
    await writeFile(
      join(cwd, "lab.yaml"),
      editedLab("three-node", [
        [["provider", "name"], "ssh"],
        [["ssh"], { user: "pirate" }],
      ]),
    );
    const { dir, files } = await renderLabDir({ lab: "lab.yaml", cwd, dir: "lab" });
    expect(existsSync(join(dir, "Vagrantfile"))).toBe(false);
    expect(files).not.toContain("Vagrantfile");
    expect(existsSync(join(dir, "provision", "minion2", "etcd.sh"))).toBe(true);
    const pki = await readFile(join(dir, "provision", "master", "pki.sh"), "utf8");
    expect(pki).toContain('die "no certificates were uploaded; run: k8slab provision --phase pki"');
    expect(pki).not.toMatch(/vagrant provision/);
    const base = await readFile(join(dir, "provision", "minion1", "base.sh"), "utf8");
    expect(base).toContain("check nodes[].ip of minion1 in the lab file");
    const shellcheck = await execa(
      "shellcheck",
      ["-S", "warning", join(dir, "provision", "master", "pki.sh")],
      {
        reject: false,
      },
    );
    expect(shellcheck.exitCode, shellcheck.stdout).toBe(0);
  });

  it("a Vagrant lab rendered again as an SSH lab loses its Vagrantfile", async () => {
    const cwd = await tmp();
    await writeFile(join(cwd, "vm.yaml"), editedLab("three-node", []));
    await renderLabDir({ lab: "vm.yaml", cwd, dir: "lab" });
    expect(existsSync(join(cwd, "lab", "Vagrantfile"))).toBe(true);
    await writeFile(
      join(cwd, "ssh.yaml"),
      editedLab("three-node", [
        [["provider", "name"], "ssh"],
        [["ssh"], { user: "root" }],
      ]),
    );
    await renderLabDir({ lab: "ssh.yaml", cwd, dir: "lab" });
    expect(existsSync(join(cwd, "lab", "Vagrantfile"))).toBe(false);
  });
});
