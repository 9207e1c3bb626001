import { describe, expect, it } from "vitest";
import { existsSync } from "node:fs";

import { join } from "node:path";
import { execa } from "execa";
import { cliArgv } from "./helpers/cli-process.js";
import { readFile, writeFile } from "node:fs/promises";
import { createFakeBin } from "./helpers/fake-bin.js";
import { editedLab, OFFLINE } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();
const CLI = cliArgv();

describe("create and Ctrl-C", () => {
  it("stops the running vagrant, exits 130 and keeps state consistent; --json gives one result", async () => {
    const dir = await tmp();
    const fake = await createFakeBin(dir, {
      vagrant: {
        rules: [
          { args: "^--version", stdout: "Vagrant 2.3.4\n" },
          { args: "^status", stdout: "1,master,state,not_created\n" },
          {
            args: "^up",
            stdout: "1,master,ui,info,Bringing machine 'master' up\n",
            sleepMs: 25_000,
          },
        ],
      },
      VBoxManage: { rules: [{ args: "^--version", stdout: "7.0.6r155176\n" }] },
    });
    // No artifacts: nothing may be fetched from the internet.
    await writeFile(join(dir, "lab.yaml"), editedLab("single-node", OFFLINE));
    const child = execa(CLI[0]!, [...CLI.slice(1), "create", "lab.yaml", "--dir", "lab"], {
      cwd: dir,
      env: {
        ...fake.env(process.env, { inheritPath: true }),
        CI: "1",
        K8SLAB_CACHE: join(dir, "cache"),
      },
      extendEnv: false,
      reject: false,
      all: true,
      timeout: 60_000,
    });
    // Wait (bounded) until vagrant up is running, then interrupt.
    for (let i = 0; i < 300; i++) {
      const calls = await fake.callsOf("vagrant");
      if (calls.some((c) => c.args[0] === "up")) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const sentAt = Date.now();
    child.kill("SIGINT");
    const result = await child;
    expect(Date.now() - sentAt).toBeLessThan(15_000);
    expect(result.exitCode, result.all).toBe(130);
    expect(result.stderr).toMatch(/interrupted; finished stages are kept/);
    expect(result.stderr).toMatch(/hint: run the same command again/);
    expect(existsSync(join(dir, "lab", "pki", "ca.pem"))).toBe(true);
    expect(existsSync(join(dir, "lab", "state.json"))).toBe(false);
    const ps = await execa("pgrep", ["-f", join(dir, "fake-bin")], { reject: false });
    expect(ps.stdout.trim()).toBe("");
    // A permanent failure (no VirtualBox) with --json: one JSON object on stdout with the error
    // and its hint, and the message for people on stderr.
    const noVbox = await createFakeBin(join(dir, "b"), {
      vagrant: { rules: [{ args: "^--version", stdout: "Vagrant 2.3.4\n" }] },
    });
    const failed = await execa(
      CLI[0]!,
      [...CLI.slice(1), "create", "lab.yaml", "--dir", "lab", "--json"],
      {
        cwd: dir,
        env: {
          ...noVbox.env(process.env, { inheritPath: true }),
          CI: "1",
          PATH: `${noVbox.dir}:/usr/bin:/bin:${join(process.execPath, "..")}`,
        },
        extendEnv: false,
        reject: false,
        all: true,
        timeout: 60_000,
      },
    );
    expect(failed.exitCode, failed.all).toBe(1);
    expect(JSON.parse(failed.stdout)).toEqual({
      ok: false,
      error: "host check failed: virtualbox: VBoxManage not found",
      hint: "install VirtualBox, or use libvirt: --provider libvirt",
    });
    expect(failed.stderr).toMatch(/host check failed: virtualbox: VBoxManage not found/);
    expect(failed.stderr).toMatch(/hint: install VirtualBox, or use libvirt/);
    expect(await readFile(join(dir, "lab", "lab.json"), "utf8")).toContain('"name": "single-node"');
  });

  it("with Vagrant missing, create stops at once with a hint", async () => {
    const dir = await tmp();
    await writeFile(join(dir, "lab.yaml"), editedLab("single-node", OFFLINE));
    const started = Date.now();
    const run = await execa(CLI[0]!, [...CLI.slice(1), "create", "lab.yaml", "--dir", "lab"], {
      cwd: dir,
      // Nothing on PATH at all: no vagrant, no VBoxManage.
      env: { PATH: join(dir, "empty"), HOME: dir, CI: "1" },
      extendEnv: false,
      reject: false,
      all: true,
      timeout: 60_000,
    });
    expect(run.exitCode, run.all).toBe(1);
    expect(run.stderr).toMatch(/error: host check failed: vagrant: vagrant not found/);
    expect(run.stderr).toMatch(/hint: install Vagrant/);
    // The host checks run before anything is rendered: a host that cannot run the lab gets no
    // lab directory (and no CA key) in the current directory.
    expect(existsSync(join(dir, "lab"))).toBe(false);
    expect(Date.now() - started).toBeLessThan(30_000);
  });
});
