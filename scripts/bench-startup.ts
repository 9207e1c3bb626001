/**
 * Start-up benchmark: wall and CPU time of `k8slab --help` and `k8slab labs` (the built CLI,
 * dist/cli/bin.js) next to `node -e 0` on the same machine in the same run, and what importing
 * each dependency costs a fresh Node process, so the figures show where the time goes.
 * Goal (issue 12): `--help` and `labs` within 1.5x of `node -e 0`. Figures only, never a test.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { packageRoot } from "../src/util/package-root.js";

/** The goal: start-up within this factor of `node -e 0`. */
export const STARTUP_GOAL = 1.5;

/** Dependencies whose import cost is measured one by one (a fresh process each). */
const MODULES = [
  "commander",
  "execa",
  "zod",
  "yaml",
  "node-forge",
  "ejs",
  "listr2",
  "undici",
  "p-retry",
  "p-map",
  "tar-stream",
  "fastest-levenshtein",
  "@swimlane/docker-reference",
  "auth-header",
];

/** k8slab's own modules, built: the entry and what its commands pull in. */
const OWN_MODULES = ["dist/cli/main.js", "dist/lab/load.js", "dist/errors.js"];

interface Sample {
  wallMs: number;
  cpuMs: number;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * Run `node args` once: wall time seen from here, CPU time (user + system, all threads) as the
 * child reports it at exit through a preloaded module (Node has no rusage of children).
 */
async function runNode(args: string[], preload: string, report: string): Promise<Sample> {
  await rm(report, { force: true });
  const start = performance.now();
  await new Promise<void>((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", preload, ...args], {
      cwd: packageRoot(),
      env: { ...process.env, K8SLAB_BENCH_CPU_REPORT: report },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    child.on("close", (c) => {
      clearTimeout(timer);
      if (c !== 0) reject(new Error(`node ${args.join(" ")} exited with ${c}:\n${stderr}`));
      else resolve();
    });
  });
  const wallMs = performance.now() - start;
  const { user, system } = JSON.parse(await readFile(report, "utf8")) as {
    user: number;
    system: number;
  };
  return { wallMs, cpuMs: (user + system) / 1000 };
}

async function measure(
  args: string[],
  runs: number,
  preload: string,
  report: string,
): Promise<{ wall: number; cpu: number; minWall: number; maxWall: number }> {
  const samples: Sample[] = [];
  for (let i = 0; i < runs; i++) samples.push(await runNode(args, preload, report));
  const walls = samples.map((s) => s.wallMs);
  return {
    wall: median(walls),
    cpu: median(samples.map((s) => s.cpuMs)),
    minWall: Math.min(...walls),
    maxWall: Math.max(...walls),
  };
}

const ms = (n: number): string => `${n.toFixed(0).padStart(5)} ms`;

export async function benchStartup(runs: number): Promise<void> {
  const bin = join(packageRoot(), "dist", "cli", "bin.js");
  if (!existsSync(bin)) {
    console.log("start-up benchmark skipped: dist/cli/bin.js is missing; run npm run build first");
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), "k8slab-bench-startup-"));
  try {
    const preloadFile = join(dir, "cpu-report.mjs");
    await writeFile(
      preloadFile,
      'import { writeFileSync } from "node:fs";\n' +
        'process.on("exit", () => writeFileSync(process.env.K8SLAB_BENCH_CPU_REPORT, JSON.stringify(process.cpuUsage())));\n',
    );
    const preload = pathToFileURL(preloadFile).href;
    const report = join(dir, "cpu.json");
    const run = (args: string[]) => measure(args, runs, preload, report);

    console.log(
      `k8slab start-up benchmark: median of ${runs} runs each, Node ${process.version}; ` +
        `CPU is user + system of the whole process; goal: within ${STARTUP_GOAL}x of node -e 0`,
    );
    const base = await run(["-e", "0"]);
    const header = `${"command".padEnd(34)} ${"wall".padStart(8)} ${"CPU".padStart(8)}   ${"wall x".padStart(6)} ${"CPU x".padStart(6)}   goal`;
    console.log(header);
    console.log(
      `${"node -e 0".padEnd(34)} ${ms(base.wall)} ${ms(base.cpu)}   ${"1.0".padStart(6)} ${"1.0".padStart(6)}`,
    );
    for (const [label, args] of [
      ["k8slab --help", [bin, "--help"]],
      ["k8slab labs", [bin, "labs"]],
    ] as const) {
      const r = await run([...args]);
      const wallX = r.wall / base.wall;
      const cpuX = r.cpu / base.cpu;
      const met = wallX <= STARTUP_GOAL && cpuX <= STARTUP_GOAL;
      console.log(
        `${label.padEnd(34)} ${ms(r.wall)} ${ms(r.cpu)}   ${wallX.toFixed(1).padStart(6)} ${cpuX.toFixed(1).padStart(6)}   ${met ? "met" : "NOT met"} (wall ${ms(r.minWall).trim()}..${ms(r.maxWall).trim()})`,
      );
    }

    console.log(
      "\nimport cost, one fresh process per module (time inside the process, node's own start excluded; shared dependencies counted in each):",
    );
    const importArgs = (specifier: string) => [
      "--input-type=module",
      "-e",
      `const t = performance.now(); const c = process.cpuUsage(); await import(${JSON.stringify(specifier)}); ` +
        `const u = process.cpuUsage(c); process.stderr.write(JSON.stringify({ wall: performance.now() - t, cpu: (u.user + u.system) / 1000 }));`,
    ];
    const rows: { name: string; wall: number; cpu: number }[] = [];
    for (const name of [
      ...MODULES,
      ...OWN_MODULES.map((m) => pathToFileURL(join(packageRoot(), m)).href),
    ]) {
      const walls: number[] = [];
      const cpus: number[] = [];
      for (let i = 0; i < runs; i++) {
        const inner = await importCost(importArgs(name));
        walls.push(inner.wall);
        cpus.push(inner.cpu);
      }
      rows.push({
        name: name.startsWith("file:")
          ? name.slice(pathToFileURL(packageRoot()).href.length + 1)
          : name,
        wall: median(walls),
        cpu: median(cpus),
      });
    }
    for (const r of rows.sort((a, b) => b.wall - a.wall)) {
      console.log(`  ${r.name.padEnd(32)} ${ms(r.wall)} ${ms(r.cpu)} CPU`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Run a node one-liner that prints `{ wall, cpu }` of its import on stderr. */
async function importCost(args: string[]): Promise<{ wall: number; cpu: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      cwd: packageRoot(),
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      try {
        if (code !== 0) throw new Error(`exited with ${code}`);
        resolve(JSON.parse(stderr) as { wall: number; cpu: number });
      } catch (error) {
        reject(new Error(`node ${args.join(" ")}: ${String(error)}\n${stderr}`));
      }
    });
  });
}
