import { describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { packageRoot } from "../src/util/package-root.js";
import { cli } from "./helpers/cli.js";
import { builtinText, editedLab } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();

describe("k8slab labs", () => {
  it("lists the built-in labs one line each", async () => {
    const { code, stdout } = await cli(["labs"], { cwd: await tmp() });
    expect(code).toBe(0);
    const rows = stdout.trimEnd().split("\n");
    expect(rows.map((r) => r.split(/\s+/)[0])).toEqual(["single-node", "three-node", "pi-cluster"]);
    expect(rows[1]).toMatch(/v1\.9\.3/);
  });
});

describe("k8slab validate", () => {
  it("exits 0 for a built-in lab", async () => {
    const r = await cli(["validate", "three-node"], { cwd: await tmp() });
    expect(r.code).toBe(0);
    expect(r.stderr).toContain("valid");
  });

  it("exits 2 for a broken lab file and names each bad field with its line", async () => {
    const cwd = await tmp();
    const text = editedLab("three-node", [
      [["nodes", 1, "ip"], "192.168.56.165"],
      [["cluster", "dnsIp"], "10.99.0.10"],
    ]).replace("    memory: 1024\n", "    memroy: 1024\n");
    await writeFile(join(cwd, "broken.yaml"), text);
    const r = await cli(["validate", "broken.yaml"], { cwd });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/broken\.yaml:\d+:\d+ nodes\.\d\.memroy: unknown key "memroy"/);
    expect(r.stderr).toContain("hint: did you mean memory?");
    const fixed = text.replace("memroy", "memory");
    await writeFile(join(cwd, "broken.yaml"), fixed);
    const r2 = await cli(["validate", "broken.yaml"], { cwd });
    expect(r2.code).toBe(2);
    expect(r2.stderr).toMatch(
      /broken\.yaml:\d+:\d+ nodes\.1\.ip: 192\.168\.56\.165 is used by master/,
    );
    expect(r2.stderr).toMatch(/broken\.yaml:\d+:\d+ cluster\.dnsIp: 10\.99\.0\.10 is outside/);
    expect(r2.stderr).not.toMatch(/at .*\.ts:\d+/); // no stack trace for user errors
  });

  it("exits 2 for an unknown lab, listing the built-in ones", async () => {
    const r = await cli(["validate", "four-node"], { cwd: await tmp() });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("single-node, three-node");
  });

  it("prints JSON with --json", async () => {
    const r = await cli(["validate", "single-node", "--json"], { cwd: await tmp() });
    expect(JSON.parse(r.stdout)).toMatchObject({ valid: true, name: "single-node" });
  });
});

describe("k8slab render", () => {
  it("writes nothing for a broken lab", async () => {
    const cwd = await tmp();
    await writeFile(
      join(cwd, "bad.yaml"),
      builtinText("three-node").replace("cpus: 2", "cpus: many"),
    );
    const r = await cli(["render", "bad.yaml", "--dir", "out"], { cwd });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/bad\.yaml:\d+:\d+ nodes\.0\.cpus:/);
    expect(await readdir(cwd)).toEqual(["bad.yaml"]);
  });

  it("renders into --dir and says what to do next; a second run keeps the PKI", async () => {
    const cwd = await tmp();
    const r = await cli(["render", "three-node", "--dir", "lab"], { cwd });
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/issued \d+ certificates/);
    expect(r.stderr).toContain("vagrant up");
    expect(existsSync(join(cwd, "lab", "Vagrantfile"))).toBe(true);
    const again = await cli(["render", "three-node", "--dir", "lab"], { cwd });
    expect(again.code).toBe(0);
    expect(again.stderr).toMatch(/kept all \d+ certificates/);
  });
});

describe("usage", () => {
  it("--help lists every command", async () => {
    const r = await cli(["--help"], { cwd: await tmp() });
    expect(r.code).toBe(0);
    for (const c of ["labs", "validate", "render"]) expect(r.stdout).toContain(c);
  });

  it("an unknown command or option exits 2", async () => {
    expect((await cli(["frobnicate"], { cwd: await tmp() })).code).toBe(2);
    expect((await cli(["render", "three-node", "--bogus"], { cwd: await tmp() })).code).toBe(2);
  });

  it("the built binary runs", async () => {
    await execa("npm", ["run", "build"], { cwd: packageRoot() });
    const bin = join(packageRoot(), "dist", "cli", "bin.js");
    const r = await execa("node", [bin, "validate", "single-node"], { reject: false, all: true });
    expect(r.exitCode, r.all).toBe(0);
    const bad = await execa("node", [bin, "validate", "no-such-lab"], { reject: false });
    expect(bad.exitCode).toBe(2);
  });
});
