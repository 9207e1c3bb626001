import { describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { readFile, readdir, stat, writeFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { execa } from "execa";
import { renderLabDir } from "../src/render/index.js";
import { editedLab } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";
import { vagrantValidate } from "./helpers/vagrant-validate.js";

const tmp = useTmpDirs();

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await walk(path)));
    else out.push(path);
  }
  return out.sort();
}

async function renderedFiles(dir: string): Promise<Record<string, string>> {
  const files: Record<string, string> = {};
  for (const path of await walk(dir)) {
    const rel = relative(dir, path);
    if (rel.startsWith("pki/")) continue;
    files[rel] = await readFile(path, "utf8");
  }
  return files;
}

describe.each(["three-node", "single-node"])("render %s", (name) => {
  it("matches the golden files, LF-only and byte-identical across runs", async () => {
    const cwd = await tmp();
    const a = await renderLabDir({ lab: name, cwd, dir: "a" });
    const b = await renderLabDir({ lab: name, cwd, dir: "b" });
    const filesA = await renderedFiles(a.dir);
    const filesB = await renderedFiles(b.dir);
    expect(filesB).toEqual(filesA);
    for (const [rel, content] of Object.entries(filesA)) {
      expect(content, rel).not.toContain("\r");
      expect(content.endsWith("\n"), rel).toBe(true);
      await expect(content).toMatchFileSnapshot(join("golden", name, rel));
    }
  });

  it("passes the real `vagrant validate` and shellcheck -S warning", async () => {
    const cwd = await tmp();
    const { dir, files } = await renderLabDir({ lab: name, cwd });
    const validate = await vagrantValidate(dir);
    expect(validate.output).toContain("validated successfully");
    expect(validate.exitCode).toBe(0);
    const scripts = files.filter((f) => f.endsWith(".sh")).map((f) => join(dir, f));
    expect(scripts.length).toBeGreaterThan(5);
    const sc = await execa("shellcheck", ["-S", "warning", ...scripts], {
      reject: false,
      all: true,
    });
    expect(sc.all).toBe("");
    expect(sc.exitCode).toBe(0);
    for (const s of scripts) expect((await stat(s)).mode & 0o777).toBe(0o755);
  });
});

describe("vagrant validate catches what it should", () => {
  it("fails on a broken VirtualBox block (the stub makes Vagrant check it)", async () => {
    const cwd = await tmp();
    const { dir } = await renderLabDir({ lab: "three-node", cwd });
    const path = join(dir, "Vagrantfile");
    await writeFile(path, (await readFile(path, "utf8")).replace("vb.cpus = 1", "vb.cpuz = 1"));
    const validate = await vagrantValidate(dir);
    expect(validate.exitCode).not.toBe(0);
    expect(validate.output).toMatch(/cpuz/);
  });
});

describe("the lab directory", () => {
  it("has one script per node and phase, and named provisioners for each phase", async () => {
    const cwd = await tmp();
    const { dir, plan } = await renderLabDir({ lab: "three-node", cwd });
    const vagrantfile = await readFile(join(dir, "Vagrantfile"), "utf8");
    for (const node of plan.nodes) {
      for (const phase of node.phases) {
        expect(existsSync(join(dir, "provision", node.name, `${phase}.sh`))).toBe(true);
        expect(vagrantfile).toContain(
          `provision '${phase}', type: "shell", path: 'provision/${node.name}/${phase}.sh'`,
        );
      }
    }
    expect(plan.nodes.find((n) => n.name === "master")!.phases).toContain("control-plane");
    expect(plan.nodes.find((n) => n.name === "minion1")!.phases).toEqual(
      expect.arrayContaining(["etcd", "kubelet", "kube-proxy"]),
    );
    expect(plan.nodes.find((n) => n.name === "minion1")!.phases).not.toContain("control-plane");
    // The lab directory holds the CA key: it must never be synced into the VMs.
    expect(vagrantfile).toContain('config.vm.synced_folder ".", "/vagrant", disabled: true');
  });

  it("re-rendering replaces rendered files but keeps what the lab owns", async () => {
    const cwd = await tmp();
    const { dir } = await renderLabDir({ lab: "three-node", cwd });
    const caBefore = await readFile(join(dir, "pki", "ca.pem"), "utf8");
    await writeFile(join(dir, "state.json"), '{"phases":["base"]}\n');
    await writeFile(join(dir, "provision", "stale.sh"), "echo stale\n");
    await writeFile(join(dir, "Vagrantfile"), "# edited by hand\n");
    await renderLabDir({ lab: "three-node", cwd });
    expect(await readFile(join(dir, "state.json"), "utf8")).toBe('{"phases":["base"]}\n');
    expect(await readFile(join(dir, "pki", "ca.pem"), "utf8")).toBe(caBefore);
    expect(existsSync(join(dir, "provision", "stale.sh"))).toBe(false);
    expect(await readFile(join(dir, "Vagrantfile"), "utf8")).toContain("Vagrant.configure");
    expect((await readdir(dir)).filter((e) => e.startsWith("."))).toEqual([]);
  });

  it("an invalid lab writes nothing at all", async () => {
    const cwd = await tmp();
    const file = join(cwd, "broken.yaml");
    await writeFile(file, editedLab("three-node", [[["nodes", 1, "ip"], "192.168.56.165"]]));
    await expect(renderLabDir({ lab: file, cwd })).rejects.toThrow(/used by master/);
    expect((await readdir(cwd)).sort()).toEqual(["broken.yaml"]);
  });

  it("refuses a directory that belongs to another lab or to someone else", async () => {
    const cwd = await tmp();
    await renderLabDir({ lab: "single-node", cwd, dir: "x" });
    await expect(renderLabDir({ lab: "three-node", cwd, dir: "x" })).rejects.toThrow(
      /holds the lab "single-node"/,
    );
    await writeFile(join(cwd, "mine.txt"), "x");
    await expect(renderLabDir({ lab: "three-node", cwd, dir: "." })).rejects.toThrow(
      /not a k8slab lab directory/,
    );
  });
});
