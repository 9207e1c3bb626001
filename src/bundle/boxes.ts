import { readdir, stat } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";

/** Where Vagrant keeps its boxes: $VAGRANT_HOME/boxes, else ~/.vagrant.d/boxes. */
export function vagrantBoxesDir(env: NodeJS.ProcessEnv): string {
  return join(env.VAGRANT_HOME || join(env.HOME || homedir(), ".vagrant.d"), "boxes");
}

/** A box as Vagrant has it on disk: one version of one box for one provider. */
export interface InstalledBox {
  name: string;
  version: string;
  provider: string;
  /** The unpacked box: metadata.json, the disk image, a Vagrantfile. */
  dir: string;
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

async function list(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch {
    return [];
  }
}

/** Newest first, comparing dotted numbers as numbers (20180309.0.0 > 2.10 > 2.9). */
function byVersionDescending(a: string, b: string): number {
  return b.localeCompare(a, "en", { numeric: true });
}

/**
 * The box Vagrant would boot for `name` (at `version` when the lab gives an exact one, else the
 * newest it has) and `provider`, read from Vagrant's own folders:
 * boxes/<name, "/" as -VAGRANTSLASH->/<version>/[<architecture>/]<provider>/ (Vagrant 2.4 added
 * the architecture level). Undefined when Vagrant does not have it.
 */
export async function findInstalledBox(
  env: NodeJS.ProcessEnv,
  box: { name: string; version?: string | undefined },
  provider: string,
): Promise<InstalledBox | undefined> {
  const root = join(vagrantBoxesDir(env), box.name.replace(/\//g, "-VAGRANTSLASH-"));
  const exact = box.version && /^[0-9][0-9A-Za-z.-]*$/.test(box.version) ? box.version : undefined;
  const versions = exact ? [exact] : (await list(root)).sort(byVersionDescending);
  for (const version of versions) {
    const direct = join(root, version, provider);
    if (await isDir(direct)) return { name: box.name, version, provider, dir: direct };
    for (const arch of await list(join(root, version))) {
      const nested = join(root, version, arch, provider);
      if (await isDir(nested)) return { name: box.name, version, provider, dir: nested };
    }
  }
  return undefined;
}
