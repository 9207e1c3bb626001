import { afterEach, describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { mkdir, readFile, readdir, stat, writeFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { execa } from "execa";
import { cli } from "./helpers/cli.js";
import { cliArgv } from "./helpers/cli-process.js";
import { editedLab, OFFLINE } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();
const CLI = cliArgv();
const isRoot = process.getuid?.() === 0;

/** Every failure here must be a message with a hint, never "k8slab hit a bug". */
function expectUserError(result: { code: number; stderr: string }, message: RegExp): void {
  expect(result.stderr).not.toMatch(/hit a bug|\n {4}at /);
  expect(result.code, result.stderr).toBe(1);
  expect(result.stderr).toMatch(message);
  expect(result.stderr).toMatch(/\nhint: \S/);
}

async function render(cwd: string, args: string[] = []) {
  return cli(["render", "single-node", "--dir", "lab", ...args], { cwd });
}

async function treeModes(root: string): Promise<Record<string, string>> {
  const modes: Record<string, string> = {};
  for (const entry of await readdir(root, { recursive: true, withFileTypes: true })) {
    const path = join(entry.parentPath, entry.name);
    modes[relative(root, path)] = ((await stat(path)).mode & 0o777).toString(8);
  }
  return modes;
}

describe("a corrupt lab.json", () => {
  for (const [what, text] of [
    ["truncated", '{\n  "source": "/labs/single-node.yaml",\n  "lab": {\n    "name": "sing'],
    ["empty", ""],
    ["not a lab", '{"lab": {"name": 3}}\n'],
  ] as const) {
    it(`(${what}) stops status, kubeconfig and destroy with the file and the repair command`, async () => {
      const cwd = await tmp();
      expect((await render(cwd)).code).toBe(0);
      await writeFile(join(cwd, "lab", "lab.json"), text);
      for (const args of [["status"], ["kubeconfig"], ["destroy", "--force"]]) {
        const result = await cli([...args, "--dir", "lab"], { cwd });
        expectUserError(result, new RegExp(`error: ${join(cwd, "lab", "lab.json")}`));
        expect(result.stderr).toContain(
          `hint: rebuild it, keeping the PKI: k8slab render single-node --dir ${join(cwd, "lab")} --repair`,
        );
      }
    });
  }

  it("render refuses it without --repair; with --repair rebuilds it and keeps every key", async () => {
    const cwd = await tmp();
    expect((await render(cwd)).code).toBe(0);
    const labJson = await readFile(join(cwd, "lab", "lab.json"), "utf8");
    const caKey = await readFile(join(cwd, "lab", "pki", "ca-key.pem"), "utf8");
    await writeFile(join(cwd, "lab", "lab.json"), labJson.slice(0, 100));
    expectUserError(await render(cwd), /lab\.json \(the rendered lab\) is corrupt: not JSON/);
    const repaired = await render(cwd, ["--repair"]);
    expect(repaired.code, repaired.stderr).toBe(0);
    expect(repaired.stderr).toMatch(/pki: kept all \d+ certificates/);
    expect(await readFile(join(cwd, "lab", "lab.json"), "utf8")).toBe(labJson);
    expect(await readFile(join(cwd, "lab", "pki", "ca-key.pem"), "utf8")).toBe(caKey);
    expect((await cli(["kubeconfig", "--dir", "lab"], { cwd })).code).toBe(0);
  });

  it("--repair still refuses a directory holding another lab's PKI", async () => {
    const cwd = await tmp();
    await writeFile(join(cwd, "three.yaml"), editedLab("three-node", OFFLINE));
    expect((await cli(["render", "three.yaml", "--dir", "lab"], { cwd })).code).toBe(0);
    await writeFile(join(cwd, "lab", "lab.json"), "{");
    expectUserError(await render(cwd, ["--repair"]), /holds the lab "three-node"/);
  });
});

describe("a corrupt certificate in the lab", () => {
  it("render names the file instead of crashing", async () => {
    const cwd = await tmp();
    expect((await render(cwd)).code).toBe(0);
    const ca = join(cwd, "lab", "pki", "ca.pem");
    await writeFile(ca, (await readFile(ca, "utf8")).slice(0, 300));
    expectUserError(await render(cwd), /ca\.pem is not a readable certificate/);
  });
});

describe("an interrupted render", () => {
  /** Start renders and SIGKILL them at different moments (nothing of the process runs after). */
  async function killRenders(cwd: string, lab: string, dir: string): Promise<void> {
    for (const afterMs of [500, 1000, 1500, 2000]) {
      const child = execa(CLI[0]!, [...CLI.slice(1), "render", lab, "--dir", dir], {
        cwd,
        reject: false,
        timeout: 180_000,
      });
      await new Promise((r) => setTimeout(r, afterMs));
      child.kill("SIGKILL");
      await child;
    }
  }

  it("into a fresh directory: the next run cleans up and completes", async () => {
    const cwd = await tmp();
    await killRenders(cwd, "single-node", "lab");
    // The pre-lock version built a new directory beside it, with a copy of the CA key.
    await mkdir(join(cwd, ".lab.k8slab-new-12345678"), { recursive: true });
    await writeFile(join(cwd, ".lab.k8slab-new-12345678", "ca-key.pem"), "secret");
    const result = await render(cwd);
    expect(result.code, result.stderr).toBe(0);
    expect(await readdir(cwd)).toEqual(["lab"]);
    expect((await readdir(join(cwd, "lab"))).filter((e) => e.startsWith("."))).toEqual([]);
    expect((await readdir(join(cwd, "lab", "pki"))).filter((e) => e.endsWith(".tmp"))).toEqual([]);
  }, 240_000);

  it("over an existing lab: leftovers go, user files that look alike stay, keys are kept", async () => {
    const cwd = await tmp();
    expect((await render(cwd)).code).toBe(0);
    const caKey = await readFile(join(cwd, "lab", "pki", "ca-key.pem"), "utf8");
    const userFiles = [
      "notes.tmp",
      ".k8slab-stage-notes",
      ".ca.pem.backup.tmp",
      ".lab.k8slab-new-x",
    ];
    for (const name of userFiles) {
      await writeFile(join(cwd, name), "mine");
      await writeFile(join(cwd, "lab", name), "mine");
      await writeFile(join(cwd, "lab", "pki", name), "mine");
    }
    // A changed IP makes every kill land while certificates are being re-issued or swapped.
    await writeFile(
      join(cwd, "moved.yaml"),
      editedLab("single-node", [[["nodes", 0, "ip"], "192.168.56.170"]]),
    );
    await killRenders(cwd, "moved.yaml", "lab");
    // What each killed step leaves, made sure of.
    await mkdir(join(cwd, "lab", ".k8slab-stage-0badc0de", "provision"), { recursive: true });
    await mkdir(join(cwd, "lab", ".k8slab-old-0badc0de"), { recursive: true });
    await writeFile(join(cwd, "lab", "pki", ".ca-key.pem.0123456789ab.tmp"), "secret");
    await writeFile(join(cwd, "lab", "pki", "nodes", "k8s", ".k8s-key.pem.0123456789ab.tmp"), "x");

    const result = await cli(["render", "moved.yaml", "--dir", "lab"], { cwd });
    expect(result.code, result.stderr).toBe(0);
    expect(await readFile(join(cwd, "lab", "pki", "ca-key.pem"), "utf8")).toBe(caKey);
    const left = async (dir: string) =>
      (await readdir(dir)).filter((e) => /^\.|\.tmp$/.test(e)).sort();
    expect(await left(join(cwd, "lab"))).toEqual([...userFiles].sort());
    expect(await left(join(cwd, "lab", "pki"))).toEqual([...userFiles].sort());
    expect(await left(join(cwd, "lab", "pki", "nodes", "k8s"))).toEqual([]);
    expect((await readdir(cwd)).sort()).toEqual(["lab", "moved.yaml", ...userFiles].sort());
  }, 240_000);
});

describe("modes", () => {
  it("under umask 000 directories are 0755 (pki 0700), keys 0600, nothing writable by others", async () => {
    const cwd = await tmp();
    const result = await execa(
      "sh",
      ["-c", 'umask 000 && exec "$@"', "sh", ...CLI, "render", "three-node", "--dir", "lab"],
      { cwd, reject: false, timeout: 180_000 },
    );
    expect(result.exitCode, result.stderr).toBe(0);
    const modes = await treeModes(join(cwd, "lab"));
    expect(modes["provision"]).toBe("755");
    expect(modes["provision/master"]).toBe("755");
    expect(modes["pki"]).toBe("700");
    expect(modes["pki/ca-key.pem"]).toBe("600");
    expect(((await stat(join(cwd, "lab"))).mode & 0o777).toString(8)).toBe("755");
    for (const [path, mode] of Object.entries(modes)) {
      expect(parseInt(mode, 8) & 0o022, `${path} is ${mode}`).toBe(0);
    }
  }, 240_000);
});

/** A tmpfs the test mounts (root only) and always unmounts. */
const mounts: string[] = [];
afterEach(async () => {
  for (const m of mounts.splice(0).reverse()) {
    await execa("umount", ["-l", m], { reject: false });
  }
});
async function mountTmpfs(path: string, size: string): Promise<void> {
  await mkdir(path, { recursive: true });
  await execa("mount", ["-t", "tmpfs", "-o", `size=${size},mode=0755`, "k8slab-test", path]);
  mounts.push(path);
}

describe.skipIf(!isRoot)("disk faults (tmpfs mounts; needs root)", () => {
  it("an empty mount point as --dir renders into it", async () => {
    const cwd = await tmp();
    await mountTmpfs(join(cwd, "lab"), "16m");
    const result = await render(cwd);
    expect(result.code, result.stderr).toBe(0);
    expect(existsSync(join(cwd, "lab", "pki", "ca-key.pem"))).toBe(true);
    expect((await render(cwd)).code).toBe(0);
  });

  it("a read-only lab directory: the file and the cause, not ENOENT; the lab survives", async () => {
    const cwd = await tmp();
    await mountTmpfs(join(cwd, "lab"), "16m");
    expect((await render(cwd)).code).toBe(0);
    const caKey = await readFile(join(cwd, "lab", "pki", "ca-key.pem"), "utf8");
    await execa("mount", ["-o", "remount,ro", join(cwd, "lab")]);
    const result = await render(cwd);
    expectUserError(result, /read-only \(EROFS\)/);
    expect(result.stderr).toContain(join(cwd, "lab"));
    expect(await readFile(join(cwd, "lab", "pki", "ca-key.pem"), "utf8")).toBe(caKey);
    const destroyed = await cli(["destroy", "--force", "--dir", "lab"], { cwd });
    expectUserError(destroyed, /read-only \(EROFS\)/);
  });

  it("a full disk: the cause and the fix; nothing lost, and the next run completes", async () => {
    const cwd = await tmp();
    const lab = join(cwd, "lab");
    await mountTmpfs(lab, "16m");
    expect((await render(cwd)).code).toBe(0);
    const caKey = await readFile(join(lab, "pki", "ca-key.pem"), "utf8");
    // Fill the disk, then ask for a re-issue (a new IP re-issues certificates).
    await execa("sh", ["-c", `dd if=/dev/zero of=${lab}/filler bs=64k 2>/dev/null; true`]);
    await writeFile(
      join(cwd, "moved.yaml"),
      editedLab("single-node", [[["nodes", 0, "ip"], "192.168.56.170"]]),
    );
    const full = await cli(["render", "moved.yaml", "--dir", "lab"], { cwd });
    expectUserError(full, /no space left on the device \(ENOSPC\)/);
    expect(full.stderr).toMatch(/hint: free some space/);
    expect(await readFile(join(lab, "pki", "ca-key.pem"), "utf8")).toBe(caKey);
    await execa("rm", [join(lab, "filler")]);
    const again = await cli(["render", "moved.yaml", "--dir", "lab"], { cwd });
    expect(again.code, again.stderr).toBe(0);
    expect(await readFile(join(lab, "pki", "ca-key.pem"), "utf8")).toBe(caKey);
    expect((await readdir(lab)).filter((e) => e.startsWith("."))).toEqual([]);
  });

  it("a full disk on a fresh render leaves nothing behind", async () => {
    const cwd = await tmp();
    await mountTmpfs(join(cwd, "lab"), "40k");
    expectUserError(await render(cwd), /no space left on the device \(ENOSPC\)/);
    expect(await readdir(join(cwd, "lab"))).toEqual([]);
  });
});
