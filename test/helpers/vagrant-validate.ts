import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";

/**
 * Run the real `vagrant validate` in a lab directory. A stub VBoxManage that answers --version
 * comes first on PATH, so Vagrant accepts VirtualBox as usable and checks its config block too.
 */
export async function vagrantValidate(dir: string): Promise<{ exitCode: number; output: string }> {
  const home = await mkdtemp(join(tmpdir(), "k8slab-vagrant-"));
  try {
    const bin = join(home, "bin");
    await execa("mkdir", ["-p", bin]);
    const stub = join(bin, "VBoxManage");
    await writeFile(
      stub,
      '#!/bin/sh\nif [ "$1" = "--version" ]; then echo 7.0.6r155176; exit 0; fi\necho "VBoxManage stub: $*" >&2\nexit 1\n',
    );
    await chmod(stub, 0o755);
    const result = await execa("vagrant", ["validate"], {
      cwd: dir,
      reject: false,
      all: true,
      timeout: 120_000,
      env: {
        PATH: `${bin}:${process.env.PATH ?? ""}`,
        VAGRANT_HOME: join(home, "vagrant.d"),
        VAGRANT_CHECKPOINT_DISABLE: "1",
      },
    });
    return { exitCode: result.exitCode ?? 1, output: String(result.all ?? "") };
  } finally {
    await rm(home, { recursive: true, force: true });
  }
}
