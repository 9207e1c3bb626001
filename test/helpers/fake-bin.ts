import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { singleQuote } from "../../src/util/quote.js";

/**
 * Fake executables for tests: each one records its argv, cwd and chosen environment variables as
 * a JSON line in a shared log, then answers from a script of rules (first match wins). Put
 * `fake.env()` into the code under test and the fakes are the only programs it can find on PATH.
 *
 *   const fake = await createFakeBin(dir, {
 *     vagrant: { rules: [{ args: "^port --guest 2375", stdout: "1700000000,default,ui,info,2376" }] },
 *     make: { rules: [{ args: "^sd-image$", files: { "out-{{env.VERSION}}.txt": "done" } }] },
 *   }, { recordEnv: ["DOCKER_HOST", "VERSION"] });
 *   ... run the code with env: fake.env() ...
 *   expect((await fake.calls()).map((c) => c.program)).toEqual(["vagrant", "make"]);
 *
 * Strings in stdout, stderr and files may use {{env.NAME}}, {{cwd}} and {{args}}.
 */

export interface FakeRule {
  /** A regular expression tested against the arguments joined with single spaces; none = any. */
  args?: string;
  stdout?: string;
  stderr?: string;
  exitCode?: number;
  /** Files to create, relative to the call's cwd (parents are created). */
  files?: Record<string, string>;
  /** Use this rule for at most this many calls; later calls fall through to the next rules. */
  times?: number;
  /** Wait this long before answering (bounded: at most 30 s). */
  sleepMs?: number;
}

export interface FakeProgram {
  rules?: FakeRule[];
  /** The answer when no rule matches (default: exit 0 with no output). */
  fallback?: FakeRule;
}

export interface FakeCall {
  program: string;
  args: string[];
  cwd: string;
  /** The recorded variables; null when unset. */
  env: Record<string, string | null>;
  /** Index of the rule that answered (-1: the fallback). */
  rule: number;
}

export interface FakeBin {
  dir: string;
  logFile: string;
  /** An environment whose PATH finds only the fakes (or the fakes first, with inheritPath). */
  env(base?: NodeJS.ProcessEnv, options?: { inheritPath?: boolean }): NodeJS.ProcessEnv;
  calls(): Promise<FakeCall[]>;
  callsOf(program: string): Promise<FakeCall[]>;
}

const SCRIPT = String.raw`
const fs = require("node:fs");
const path = require("node:path");
const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const args = process.argv.slice(3);
const joined = args.join(" ");
const readLog = () => {
  try {
    return fs.readFileSync(spec.logFile, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
  } catch {
    return [];
  }
};
const used = (i) => readLog().filter((c) => c.program === spec.program && c.rule === i).length;
let rule = -1;
const rules = spec.rules || [];
for (let i = 0; i < rules.length; i++) {
  const r = rules[i];
  if (r.args !== undefined && !new RegExp(r.args).test(joined)) continue;
  if (r.times !== undefined && used(i) >= r.times) continue;
  rule = i;
  break;
}
const answer = rule >= 0 ? rules[rule] : spec.fallback || {};
const env = {};
for (const name of spec.recordEnv) env[name] = process.env[name] === undefined ? null : process.env[name];
fs.appendFileSync(spec.logFile, JSON.stringify({ program: spec.program, args, cwd: process.cwd(), env, rule }) + "\n");
const fill = (text) =>
  String(text)
    .replace(/\{\{env\.([A-Za-z_][A-Za-z0-9_]*)\}\}/g, (_, n) => process.env[n] || "")
    .replace(/\{\{cwd\}\}/g, process.cwd())
    .replace(/\{\{args\}\}/g, joined);
const finish = () => {
  for (const [name, content] of Object.entries(answer.files || {})) {
    const target = path.resolve(process.cwd(), fill(name));
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, fill(content));
  }
  if (answer.stdout !== undefined) process.stdout.write(fill(answer.stdout) + "\n");
  if (answer.stderr !== undefined) process.stderr.write(fill(answer.stderr) + "\n");
  process.exitCode = answer.exitCode || 0;
};
const wait = Math.min(Math.max(Number(answer.sleepMs) || 0, 0), 30000);
if (wait > 0) setTimeout(finish, wait);
else finish();
`;

/** Write the fakes into <root>/fake-bin; the log is <root>/fake-bin/calls.jsonl. */
export async function createFakeBin(
  root: string,
  programs: Record<string, FakeProgram>,
  options: { recordEnv?: string[] } = {},
): Promise<FakeBin> {
  const dir = join(root, "fake-bin");
  const specDir = join(root, "fake-bin-specs");
  await mkdir(dir, { recursive: true });
  await mkdir(specDir, { recursive: true });
  const logFile = join(specDir, "calls.jsonl");
  await writeFile(logFile, "");
  const runner = join(specDir, "fake.cjs");
  await writeFile(runner, SCRIPT);
  for (const [program, spec] of Object.entries(programs)) {
    if (!/^[A-Za-z0-9._-]+$/.test(program)) throw new Error(`bad fake program name ${program}`);
    const specFile = join(specDir, `${program}.json`);
    await writeFile(
      specFile,
      JSON.stringify({
        program,
        logFile,
        recordEnv: options.recordEnv ?? [],
        rules: spec.rules ?? [],
        fallback: spec.fallback,
      }),
    );
    const exe = join(dir, program);
    await writeFile(
      exe,
      `#!/bin/sh\nexec ${singleQuote(process.execPath)} ${singleQuote(runner)} ${singleQuote(specFile)} "$@"\n`,
    );
    await chmod(exe, 0o755);
  }
  const calls = async (): Promise<FakeCall[]> =>
    (await readFile(logFile, "utf8"))
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as FakeCall);
  return {
    dir,
    logFile,
    env(base = process.env, opts = {}) {
      const inherited = opts.inheritPath && base.PATH ? `${delimiter}${base.PATH}` : "";
      return { ...base, PATH: `${dir}${inherited}` };
    },
    calls,
    async callsOf(program) {
      return (await calls()).filter((c) => c.program === program);
    },
  };
}
