/**
 * The real Kubernetes v1.9.3 (hyperkube) and flannel v0.10.0 programs of ../shared/fixtures (see
 * its README), made into archives in the official release layouts, as a lab serves them:
 *
 *   kubernetes-server-linux-amd64.tar.gz   kubernetes/server/bin/{hyperkube,kubelet,kube-proxy,kubectl}
 *   flannel-v0.10.0-linux-amd64.tar.gz     flanneld
 *
 * The programs are checked against the fixture's SHA256SUMS before use. The archives are cached
 * (by the programs' checksums) in the test cache, so a second run makes nothing.
 */
import { execa } from "execa";
import { createHash } from "node:crypto";
import { createReadStream, existsSync } from "node:fs";
import {
  chmod,
  copyFile,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rename,
  rm,
  symlink,
} from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { packageRoot } from "../../src/util/package-root.js";

export function k8sFixturesDir(): string {
  return (
    process.env.K8SLAB_K8S_FIXTURES ?? join(packageRoot(), "..", "shared", "fixtures", "k8s-v1.9.3")
  );
}

/** Why the fixtures cannot be used here, or undefined when they can. */
export function k8sFixturesMissing(): string | undefined {
  const dir = k8sFixturesDir();
  for (const f of ["hyperkube.xz", "flanneld.xz", "SHA256SUMS"]) {
    if (!existsSync(join(dir, f))) return `${join(dir, f)} is absent (see its README)`;
  }
  return undefined;
}

export interface ServedArchive {
  /** File name inside `dir`. */
  file: string;
  sha256: string;
  /** Archive member: program name, as a lab's `install:` says. */
  install: Record<string, string>;
}

export interface K8sFixtures {
  dir: string;
  /** The hyperkube program, called `kubectl` (so it runs kubectl). */
  kubectl: string;
  /** The same program called `hyperkube`: `hyperkube apiserver --help`. */
  hyperkube: string;
  flanneld: string;
  archives: { "kubernetes-server": ServedArchive; flannel: ServedArchive };
}

async function sha256Of(file: string): Promise<string> {
  const hash = createHash("sha256");
  await pipeline(createReadStream(file), hash);
  return hash.digest("hex");
}

function testCache(): string {
  return (
    process.env.K8SLAB_TEST_CACHE ??
    join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "k8slab-test")
  );
}

/** Decompress a fixture program and check it against SHA256SUMS. */
async function program(name: string, to: string, sums: Map<string, string>): Promise<void> {
  const want = sums.get(name);
  if (!want) throw new Error(`SHA256SUMS of the fixtures lists no ${name}`);
  await execa("sh", ["-c", 'xz -dc "$1" > "$2"', "sh", join(k8sFixturesDir(), `${name}.xz`), to]);
  const got = await sha256Of(to);
  if (got !== want) throw new Error(`fixture ${name}: sha256 ${got}, SHA256SUMS says ${want}`);
  await chmod(to, 0o755);
}

const KUBE_BIN = "kubernetes/server/bin";

export async function prepareK8sFixtures(): Promise<K8sFixtures> {
  const sums = new Map(
    (await readFile(join(k8sFixturesDir(), "SHA256SUMS"), "utf8"))
      .split("\n")
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f.length === 2)
      .map(([sum, file]) => [file!, sum!] as const),
  );
  const key = createHash("sha256")
    .update(`${sums.get("hyperkube")}\n${sums.get("flanneld")}\nv2`)
    .digest("hex")
    .slice(0, 16);
  const dir = join(testCache(), `k8s-fixtures-${key}`);
  const kubeTar = "kubernetes-server-linux-amd64.tar.gz";
  const flannelTar = "flannel-v0.10.0-linux-amd64.tar.gz";
  if (!existsSync(join(dir, "done"))) {
    await mkdir(testCache(), { recursive: true });
    const work = await mkdtemp(join(testCache(), "k8s-fixtures-build."));
    try {
      const bin = join(work, "stage", KUBE_BIN);
      await mkdir(bin, { recursive: true });
      await program("hyperkube", join(bin, "hyperkube"), sums);
      // The release holds each as its own file; copies of hyperkube run as the name they have.
      for (const p of ["kubelet", "kube-proxy", "kubectl"]) {
        await copyFile(join(bin, "hyperkube"), join(bin, p));
      }
      await program("flanneld", join(work, "stage", "flanneld"), sums);
      // gzip -1: the VMs decompress it under software emulation.
      const pack = (out: string, member: string) =>
        execa("sh", [
          "-c",
          'tar -C "$1" -cf - "$3" | gzip -1 > "$2"',
          "sh",
          join(work, "stage"),
          join(work, out),
          member,
        ]);
      await pack(kubeTar, "kubernetes");
      await pack(flannelTar, "flanneld");
      await copyFile(join(bin, "hyperkube"), join(work, "kubectl"));
      await chmod(join(work, "kubectl"), 0o755);
      // hyperkube runs the component its first argument names when called by its own name.
      await symlink("kubectl", join(work, "hyperkube"));
      await copyFile(join(work, "stage", "flanneld"), join(work, "flanneld"));
      await chmod(join(work, "flanneld"), 0o755);
      await rm(join(work, "stage"), { recursive: true });
      await execa("touch", [join(work, "done")]);
      await rm(dir, { recursive: true, force: true });
      await rename(work, dir);
      // Archives of earlier versions of this helper are never used again.
      for (const old of await readdir(testCache())) {
        if (/^k8s-fixtures-[0-9a-f]{16}$/.test(old) && join(testCache(), old) !== dir) {
          await rm(join(testCache(), old), { recursive: true, force: true });
        }
      }
    } catch (error) {
      await rm(work, { recursive: true, force: true });
      throw error;
    }
  }
  return {
    dir,
    kubectl: join(dir, "kubectl"),
    hyperkube: join(dir, "hyperkube"),
    flanneld: join(dir, "flanneld"),
    archives: {
      "kubernetes-server": {
        file: kubeTar,
        sha256: await sha256Of(join(dir, kubeTar)),
        install: Object.fromEntries(
          ["hyperkube", "kubelet", "kube-proxy", "kubectl"].map((p) => [`${KUBE_BIN}/${p}`, p]),
        ),
      },
      flannel: {
        file: flannelTar,
        sha256: await sha256Of(join(dir, flannelTar)),
        install: { flanneld: "flanneld" },
      },
    },
  };
}
