import { describe, expect, it } from "vitest";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { cli } from "./helpers/cli.js";
import { editedLab } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();

/** stdout under --json: exactly one JSON object, nothing before or after it. */
function oneObject(stdout: string): Record<string, unknown> {
  const value: unknown = JSON.parse(stdout);
  expect(value).toBeTypeOf("object");
  expect(Array.isArray(value)).toBe(false);
  expect(value).not.toBeNull();
  return value as Record<string, unknown>;
}

/** An environment in which no external program can be found. */
async function noPrograms(): Promise<NodeJS.ProcessEnv> {
  const bin = join(await tmp(), "bin");
  await mkdir(bin);
  return { ...process.env, PATH: bin };
}

describe("--json prints exactly one object, success or failure", () => {
  it("validate --json of a broken lab: ok false, the error and every problem with its place", async () => {
    const cwd = await tmp();
    const text = editedLab("three-node", [[["nodes", 1, "ip"], "192.168.56.165"]]).replace(
      "    memory: 1024\n",
      "    memroy: 1024\n",
    );
    await writeFile(join(cwd, "broken.yaml"), text);
    const r = await cli(["validate", "broken.yaml", "--json"], { cwd });
    expect(r.code).toBe(2);
    const out = oneObject(r.stdout);
    expect(out).toMatchObject({ ok: false });
    expect(out.error).toMatch(/broken\.yaml is not a valid lab/);
    expect(out.hint).toMatch(/k8slab validate broken\.yaml/);
    const problems = out.problems as Record<string, unknown>[];
    expect(problems.length).toBeGreaterThan(0);
    const memroy = problems.find((p) => String(p.path).endsWith("memroy"));
    expect(memroy).toMatchObject({
      severity: "error",
      file: "broken.yaml",
      message: 'unknown key "memroy"',
      hint: "did you mean memory?",
    });
    expect(memroy!.line).toBeTypeOf("number");
    expect(memroy!.col).toBeTypeOf("number");
    // People still get the message on stderr.
    expect(r.stderr).toMatch(/broken\.yaml:\d+:\d+ nodes\.\d\.memroy: unknown key "memroy"/);
  });

  it("validate --json of a valid lab: ok true with the result", async () => {
    const r = await cli(["validate", "single-node", "--json"], { cwd: await tmp() });
    expect(r.code).toBe(0);
    expect(oneObject(r.stdout)).toMatchObject({ ok: true, valid: true, name: "single-node" });
  });

  it("labs --json: ok true", async () => {
    const r = await cli(["labs", "--json"], { cwd: await tmp() });
    expect(r.code).toBe(0);
    expect(oneObject(r.stdout)).toMatchObject({
      ok: true,
      labs: expect.arrayContaining([expect.objectContaining({ name: "three-node", kind: "vm" })]),
    });
  });

  it.each([
    [["validate", "three-node", "--json", "--bogus"], /unknown option '--bogus'/],
    [["validate", "--json"], /missing required argument 'lab'/],
    [["create", "three-node", "--provider", "vbox", "--json"], /vbox.*invalid|invalid.*vbox/i],
    [["lab", "--json"], /unknown command 'lab'/],
    [["ssh", "master", "--json"], /unknown option '--json'/],
  ])("a usage error that commander finds (%j): exit 2 and one object", async (argv, error) => {
    const r = await cli(argv, { cwd: await tmp(), env: await noPrograms() });
    expect(r.code).toBe(2);
    const out = oneObject(r.stdout);
    expect(out).toMatchObject({ ok: false, hint: "run with --help for usage" });
    expect(out.error).toMatch(error);
    expect(r.stderr).toMatch(error);
  });

  it("status --json of a lab that is not there: ok false with the error and its hint", async () => {
    const r = await cli(["status", "no-such-lab", "--json"], {
      cwd: await tmp(),
      env: await noPrograms(),
    });
    expect(r.code).not.toBe(0);
    const out = oneObject(r.stdout);
    expect(out.ok).toBe(false);
    expect(out.error).toMatch(/no-such-lab/);
    expect(r.stderr).toMatch(/no-such-lab/);
  });

  it("create --json of a lab that is not there: exit 2, ok false, nothing else on stdout", async () => {
    const cwd = await tmp();
    const r = await cli(["create", "no-such-lab", "--json"], { cwd, env: await noPrograms() });
    expect(r.code).toBe(2);
    const out = oneObject(r.stdout);
    expect(out).toMatchObject({ ok: false });
    expect(out.error).toMatch(/no-such-lab/);
    expect(out.hint).toBeTypeOf("string");
  });
});
