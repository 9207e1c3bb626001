import { describe, expect, it } from "vitest";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { builtinPiLabsDir } from "../src/hypriot/pi-lab.js";
import { cli } from "./helpers/cli.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();
const piText = () => readFile(join(builtinPiLabsDir(), "pi-cluster.yaml"), "utf8");

describe("an unknown lab name gets the nearest built-in lab (issue 12)", () => {
  it.each([["create"], ["validate"], ["render"]])("%s three-nod", async (command) => {
    const cwd = await tmp();
    const r = await cli([command, "three-nod"], { cwd });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("did you mean three-node?");
    expect(r.stderr).toMatch(/built-in labs: .*single-node, three-node/);
    expect(await readdir(cwd)).toEqual([]);
  });

  it("a name close to nothing suggests nothing but still lists the labs", async () => {
    const r = await cli(["validate", "kubernetes-the-hard-way"], { cwd: await tmp() });
    expect(r.code).toBe(2);
    expect(r.stderr).not.toContain("did you mean");
    expect(r.stderr).toContain("pi-cluster");
  });
});

describe("Pi cluster labs are dispatched on kind: (issue 12)", () => {
  it("labs lists them, marked as Pi labs for flash-config", async () => {
    const r = await cli(["labs"], { cwd: await tmp() });
    expect(r.code).toBe(0);
    const row = r.stdout.split("\n").find((l) => l.startsWith("pi-cluster "));
    expect(row).toMatch(/Pi .*flash-config/);
    const json = await cli(["labs", "--json"], { cwd: await tmp() });
    const { labs } = JSON.parse(json.stdout) as { labs: unknown[] };
    expect(labs).toContainEqual(
      expect.objectContaining({ name: "pi-cluster", kind: "pi-cluster", nodes: 3 }),
    );
    expect(labs).toContainEqual(
      expect.objectContaining({ name: "three-node", kind: "vm", nodes: 3 }),
    );
  });

  it("validate checks a Pi lab with the Pi schema, by name and by path", async () => {
    const cwd = await tmp();
    await writeFile(join(cwd, "crew.yaml"), await piText());
    for (const ref of ["pi-cluster", "crew.yaml"]) {
      const r = await cli(["validate", ref], { cwd });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/Raspberry Pi cluster lab cluster-1 is valid \(3 boards\)/);
      expect(r.stderr).not.toContain("unknown key");
    }
    const json = await cli(["validate", "pi-cluster", "--json"], { cwd });
    expect(JSON.parse(json.stdout)).toMatchObject({ valid: true, kind: "pi-cluster" });
  });

  it("validate reports a broken Pi lab's own problems, not the VM schema's", async () => {
    const cwd = await tmp();
    await writeFile(
      join(cwd, "crew.yaml"),
      (await piText()).replace(/^master:\n/m, "master:\n  hostnmae: x\n"),
    );
    const r = await cli(["validate", "crew.yaml"], { cwd });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/crew\.yaml:\d+:\d+ master\.hostnmae: unknown key/);
    expect(r.stderr).not.toMatch(/kind: unknown key|nodes\.0\.name|versions/);
  });

  it("render on a Pi lab renders the lab of its boards (provider ssh, issue 15)", async () => {
    const cwd = await tmp();
    await writeFile(join(cwd, "crew.yaml"), await piText());
    for (const ref of ["pi-cluster", "crew.yaml"]) {
      const r = await cli(["render", ref, "--dir", `out-${ref}`], { cwd });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).not.toContain("unknown key");
      expect(await readdir(join(cwd, `out-${ref}`, "provision"))).toEqual([
        "bee42-crew-01-001",
        "bee42-crew-01-002",
        "bee42-crew-01-003",
      ]);
    }
  });

  it("flash-config on a VM lab says it is a VM lab", async () => {
    const cwd = await tmp();
    const r = await cli(["flash-config", "three-node", "--out", "flash"], { cwd });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("is a VM lab");
    expect(await readdir(cwd)).toEqual([]);
  });
});
