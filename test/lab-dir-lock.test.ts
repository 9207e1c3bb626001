import { describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { readFile, readdir, utimes, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { parse, stringify } from "yaml";
import { LOCK_FILE, withLabLock, type LockHolder } from "../src/lab-dir/lock.js";
import { mergeKubeconfig } from "../src/lifecycle/kubeconfig.js";
import { renderLabDir } from "../src/render/index.js";
import { cliArgv } from "./helpers/cli-process.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();
const CLI = cliArgv();

/** A pid that no process has any more: a child that already exited. */
async function deadPid(): Promise<number> {
  const child = execa("true");
  await child;
  return child.pid!;
}

function lockText(holder: Partial<LockHolder>): string {
  return `${JSON.stringify({
    pid: process.pid,
    host: hostname(),
    command: "create",
    since: new Date().toISOString(),
    token: "0123456789abcdef",
    ...holder,
  })}\n`;
}

describe("the lab directory lock", () => {
  it("concurrent renders into one fresh --dir: one CA, no crash, every run reports it", async () => {
    const cwd = await tmp();
    const runs = await Promise.all(
      [1, 2, 3].map(() =>
        execa(CLI[0]!, [...CLI.slice(1), "render", "single-node", "--dir", "lab", "--json"], {
          cwd,
          reject: false,
          timeout: 120_000,
        }),
      ),
    );
    const caKey = await readFile(join(cwd, "lab", "pki", "ca-key.pem"), "utf8");
    let created = 0;
    for (const run of runs) {
      expect(run.stderr).not.toMatch(/ENOENT|hit a bug/);
      if (run.exitCode !== 0) {
        // The only acceptable failure: the lock was still held after the wait.
        expect(run.stderr, run.stderr).toMatch(/is locked: k8slab render \(pid \d+/);
        continue;
      }
      const pki = (JSON.parse(run.stdout) as { pki: { created: string[]; reused: string[] } }).pki;
      if (pki.created.includes("ca")) created++;
      else expect(pki.reused).toContain("ca");
    }
    expect(created).toBe(1);
    expect(await readFile(join(cwd, "lab", "pki", "ca-key.pem"), "utf8")).toBe(caKey);
    expect((await readdir(join(cwd, "lab"))).filter((e) => e.startsWith("."))).toEqual([]);
    expect((await readdir(cwd)).sort()).toEqual(["lab"]);
  }, 240_000);

  it("a second command waits, then fails naming the holder's pid, command and start", async () => {
    const dir = join(await tmp(), "lab");
    let release!: () => void;
    const holding = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const inside = new Promise<void>((r) => (entered = r));
    const first = withLabLock(dir, "create", async () => {
      entered();
      await holding;
      return "first";
    });
    await inside;
    const waited: LockHolder[] = [];
    const started = Date.now();
    const second = withLabLock(dir, "destroy", async () => "second", {
      waitMs: 600,
      onWait: (h) => waited.push(h),
    });
    await expect(second).rejects.toMatchObject({
      message: expect.stringMatching(
        new RegExp(
          `${LOCK_FILE.replace(".", "\\.")} is locked: k8slab create \\(pid ${process.pid}, since \\d{4}-\\d\\d-\\d\\dT`,
        ),
      ),
      hint: expect.stringContaining(`remove ${join(dir, LOCK_FILE)}`),
    });
    expect(Date.now() - started).toBeGreaterThanOrEqual(500);
    expect(waited.map((h) => h.command)).toEqual(["create"]);
    release();
    expect(await first).toBe("first");
    // Released: the next one gets it at once; the directory the lock created is gone again.
    expect(await withLabLock(dir, "render", async () => "third", { waitMs: 0 })).toBe("third");
    expect(existsSync(dir)).toBe(false);
  });

  it("a waiting command goes on as soon as the holder finishes", async () => {
    const dir = await tmp();
    const order: string[] = [];
    let entered: () => void = () => undefined;
    const firstIn = new Promise<void>((resolve) => (entered = resolve));
    const first = withLabLock(dir, "render", async () => {
      order.push("first in");
      entered();
      await new Promise((r) => setTimeout(r, 300));
      order.push("first out");
    });
    // The second asks only once the first holds the lock (a busy machine may take a while).
    await firstIn;
    const second = withLabLock(dir, "render", async () => void order.push("second"));
    await Promise.all([first, second]);
    expect(order).toEqual(["first in", "first out", "second"]);
  });

  it("takes over a lock left by a dead process, a reused pid or a cut-short lock file", async () => {
    const dir = await tmp();
    const lock = join(dir, LOCK_FILE);
    const longAgo = new Date(Date.now() - 60_000);
    for (const text of [
      lockText({ pid: await deadPid() }),
      // Our own pid, but a different start time: the holder died and its pid was reused.
      ...(existsSync("/proc/self/stat") ? [lockText({ started: "1" })] : []),
      "",
      '{"pid": 12',
    ]) {
      await writeFile(lock, text);
      await utimes(lock, longAgo, longAgo);
      const seen = await withLabLock(dir, "render", () => readFile(lock, "utf8"), { waitMs: 0 });
      expect(JSON.parse(seen)).toMatchObject({ pid: process.pid, command: "render" });
      expect(existsSync(lock)).toBe(false);
    }
  });

  it("an empty lock file that is being written this instant is not taken", async () => {
    const dir = await tmp();
    const lock = join(dir, LOCK_FILE);
    await writeFile(lock, "");
    await expect(withLabLock(dir, "render", async () => "stolen", { waitMs: 300 })).rejects.toThrow(
      /stayed locked for 300 ms by an unreadable lock file/,
    );
    expect(await readFile(lock, "utf8")).toBe("");
  });

  it("is re-entrant within one call chain: create holds it while it renders", async () => {
    const cwd = await tmp();
    const dir = join(cwd, "lab");
    const result = await withLabLock(dir, "create", async () => {
      const held = JSON.parse(await readFile(join(dir, LOCK_FILE), "utf8")) as LockHolder;
      const rendered = await renderLabDir({ lab: "single-node", cwd, dir: "lab" });
      // Still create's lock, not released by the nested render.
      expect(JSON.parse(await readFile(join(dir, LOCK_FILE), "utf8"))).toEqual(held);
      return rendered;
    });
    expect(result.pki.created).toContain("ca");
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
  });

  it("is released when the command fails", async () => {
    const dir = await tmp();
    await expect(
      withLabLock(dir, "provision", async () => {
        throw new Error("boom");
      }),
    ).rejects.toThrow("boom");
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
    expect(existsSync(dir)).toBe(true);
  });
});

describe("kubeconfig --merge under the lock", () => {
  it("concurrent merges of several labs into one kubeconfig lose none of them", async () => {
    const dir = await tmp();
    const labs = ["alpha", "beta", "gamma", "delta"];
    for (const name of labs) {
      const server = `https://192.0.2.${labs.indexOf(name) + 1}:6443`;
      await writeFile(
        join(dir, `${name}.kubeconfig`),
        stringify({
          apiVersion: "v1",
          kind: "Config",
          clusters: [{ name, cluster: { server } }],
          users: [{ name: `admin-${name}`, user: {} }],
          contexts: [{ name, context: { cluster: name, user: `admin-${name}` } }],
          "current-context": name,
        }),
      );
    }
    const target = join(dir, "kube", "config");
    const results = await Promise.allSettled(
      labs.map((name) => mergeKubeconfig(join(dir, `${name}.kubeconfig`), target)),
    );
    expect(results.filter((r) => r.status === "rejected")).toEqual([]);
    const merged = parse(await readFile(target, "utf8")) as { contexts: unknown[] };
    expect(merged.contexts).toHaveLength(labs.length);
    expect(existsSync(`${target}.k8slab-lock`)).toBe(false);
  });
});
