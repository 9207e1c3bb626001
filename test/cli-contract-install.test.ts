import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { packageRoot } from "../src/util/package-root.js";

interface LockEntry {
  version?: string;
  optionalDependencies?: Record<string, string>;
}

const lock = JSON.parse(readFileSync(join(packageRoot(), "package-lock.json"), "utf8")) as {
  packages: Record<string, LockEntry>;
};

describe("install from the committed lock file on any platform", () => {
  it("the test setup installs with npm ci, from a lock that holds every platform's optional packages", () => {
    const script = readFileSync(join(packageRoot(), "scripts", "install-test-deps.sh"), "utf8");
    const npm = script.split("\n").filter((l) => /^\s*npm /.test(l));
    expect(npm).toEqual(["npm ci --no-audit --no-fund"]);

    // npm ci on macOS or Windows needs their native builds in the lock (npm/cli#4828).
    const missing: string[] = [];
    for (const [path, entry] of Object.entries(lock.packages)) {
      for (const dep of Object.keys(entry.optionalDependencies ?? {})) {
        const nested = `${path}/node_modules/${dep}`;
        if (!lock.packages[nested] && !lock.packages[`node_modules/${dep}`])
          missing.push(`${dep} (for ${path})`);
      }
    }
    expect(missing).toEqual([]);
    for (const name of ["@rollup/rollup-darwin-arm64", "@esbuild/darwin-arm64"]) {
      expect(lock.packages[`node_modules/${name}`]?.version).toBeTypeOf("string");
    }
  });
});
