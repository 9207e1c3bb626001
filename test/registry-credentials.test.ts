import { describe, expect, it } from "vitest";
import { readFile, readdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { validateLabText } from "../src/lab/load.js";
import { planLab } from "../src/plan/plan.js";
import { dockerConfigJson, readRegistryPassword } from "../src/registry/credentials.js";
import { renderLab } from "../src/render/render.js";
import { cli } from "./helpers/cli.js";
import { createFakeBin } from "./helpers/fake-bin.js";
import { editedLab, OFFLINE } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";

/** Seed 003's private registry login: read on the host, delivered in bundles, never shown. */

const tmp = useTmpDirs();
const PASSWORD = "s3cret-Pa55word!for#registry";
const SERVER = "registry.example.invalid:5000";

function registryLab(registry: Record<string, unknown>): string {
  return editedLab("single-node", [
    ...OFFLINE,
    [["registry"], { server: SERVER, username: "bee", ...registry }],
  ]);
}

/** Every file under dir whose bytes contain the text. */
async function filesContaining(dir: string, text: string): Promise<string[]> {
  const hits: string[] = [];
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath, entry.name);
    if ((await readFile(path)).includes(text)) hits.push(path);
  }
  return hits;
}

describe("registry credentials", () => {
  it("Docker's config.json: one auths entry, base64 of user:password", () => {
    const config = JSON.parse(
      dockerConfigJson(
        { server: SERVER, username: "bee", passwordEnv: "X", pullSecret: false },
        PASSWORD,
      ),
    ) as { auths: Record<string, { auth: string }> };
    expect(Object.keys(config.auths)).toEqual([SERVER]);
    expect(Buffer.from(config.auths[SERVER]!.auth, "base64").toString()).toBe(`bee:${PASSWORD}`);
  });

  it("a missing variable or file is named in the error; what a file holds never is", async () => {
    const dir = await tmp();
    const registry = { server: SERVER, username: "bee", pullSecret: false } as const;
    await expect(
      readRegistryPassword({ ...registry, passwordEnv: "REG_PW" }, { env: {}, labFileDir: dir }),
    ).rejects.toThrow(/environment variable REG_PW, which is not set/);
    await expect(
      readRegistryPassword({ ...registry, passwordFile: "pw.txt" }, { env: {}, labFileDir: dir }),
    ).rejects.toThrow(`cannot read the password of registry ${SERVER} from ${join(dir, "pw.txt")}`);
    await writeFile(join(dir, "pw.txt"), `${PASSWORD}\nsecond line\n`);
    const error = await readRegistryPassword(
      { ...registry, passwordFile: "pw.txt" },
      { env: {}, labFileDir: dir },
    ).catch((e: unknown) => e as Error);
    expect(String(error)).toContain("must hold the password");
    expect(JSON.stringify(error) + String(error)).not.toContain(PASSWORD);
    await writeFile(join(dir, "pw.txt"), `${PASSWORD}\n`);
    expect(
      await readRegistryPassword(
        { ...registry, passwordFile: "pw.txt" },
        { env: {}, labFileDir: dir },
      ),
    ).toBe(PASSWORD);
  });

  it("the rendered scripts hold no password: pki installs the bundle's file, addons makes the pull secrets", async () => {
    const { lab, problems } = validateLabText(
      "lab.yaml",
      registryLab({ passwordEnv: "REG_PW", pullSecret: ["default", "apps"] }),
    );
    expect(problems.filter((p) => p.severity === "error")).toEqual([]);
    const plan = planLab(lab!);
    // The pull secrets need the addons phase even without addons.
    expect(plan.master.phases).toContain("addons");
    const files = await renderLab(plan, { labFile: "lab.yaml" });
    const text = (p: string) => files.find((f) => f.path === `provision/k8s/${p}.sh`)!.content;
    expect(text("pki")).toContain("put_file /root/.docker/config.json 0600");
    expect(text("addons")).toMatch(/^for ns in default apps; do$/m);
    expect(text("addons")).toContain("--type=kubernetes.io/dockerconfigjson");
    expect(text("addons")).toContain('{"imagePullSecrets":[{"name":"k8slab-registry"}]}');
    const dir = await tmp();
    for (const f of files) {
      expect(f.content).not.toContain(PASSWORD);
      if (f.path.endsWith(".sh"))
        await writeFile(join(dir, f.path.replaceAll("/", "_")), f.content);
    }
    const scripts = (await readdir(dir)).map((f) => join(dir, f));
    const sc = await execa("shellcheck", ["-S", "warning", ...scripts], {
      reject: false,
      all: true,
    });
    expect(sc.all).toBe("");
  });

  it("k8slab provision stages the login in each node's bundle (0600) and nowhere else, and prints it nowhere", async () => {
    const cwd = await tmp();
    await writeFile(
      join(cwd, "lab.yaml"),
      registryLab({ passwordEnv: "REG_PW", pullSecret: true }),
    );
    const render = await cli(["render", "lab.yaml", "--dir", "lab"], { cwd });
    expect(render.code, render.stderr).toBe(0);
    const fake = await createFakeBin(join(cwd, "fakes"), {
      vagrant: {
        rules: [{ args: "^status", stdout: "1,k8s,provider-name,virtualbox\n1,k8s,state,running" }],
      },
    });
    const env = fake.env({
      ...process.env,
      K8SLAB_CACHE: join(cwd, "cache"),
      REG_PW: PASSWORD,
    });
    const run = await cli(["provision", "--dir", "lab", "--phase", "pki"], { cwd, env });
    expect(run.code, run.stderr).toBe(0);
    const staged = join(cwd, "lab", "pki", "nodes", "k8s", "docker-config.json");
    expect((await stat(staged)).mode & 0o777).toBe(0o600);
    const config = JSON.parse(await readFile(staged, "utf8")) as {
      auths: Record<string, { auth: string }>;
    };
    expect(Buffer.from(config.auths[SERVER]!.auth, "base64").toString()).toBe(`bee:${PASSWORD}`);
    expect((await fake.callsOf("vagrant")).map((c) => c.args.join(" "))).toContainEqual(
      expect.stringMatching(/^provision k8s --provision-with pki-upload,pki/),
    );
    // Not in any file of the lab directory (logs, state.json, scripts, the bundle itself holds
    // only base64), nor in what k8slab or the fakes saw on their command lines.
    expect(await filesContaining(cwd, PASSWORD)).toEqual([]);
    expect(run.stdout + run.stderr).not.toContain(PASSWORD);

    // Without the variable: a clear error that names it, and nothing runs.
    const without = { ...env };
    delete without.REG_PW;
    const missing = await cli(["provision", "--dir", "lab", "--phase", "pki"], {
      cwd,
      env: without,
    });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("environment variable REG_PW, which is not set");
  });
});
