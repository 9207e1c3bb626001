import { cp, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll } from "vitest";
import { renderLabDir } from "../../src/render/index.js";

/**
 * Renders a built-in lab once for the test file (PKI included, which is the slow part) and returns
 * a function that gives each test a fresh working directory (from `tmp`) with a copy in ./lab.
 */
export function useRenderedLab(lab: string, tmp: () => Promise<string>): () => Promise<string> {
  let template = "";
  let templateRoot = "";
  beforeAll(async () => {
    templateRoot = await mkdtemp(join(tmpdir(), "k8slab-test-"));
    template = (await renderLabDir({ lab, cwd: templateRoot })).dir;
  });
  afterAll(async () => {
    if (templateRoot) await rm(templateRoot, { recursive: true, force: true });
  });
  return async () => {
    const cwd = await tmp();
    await cp(template, join(cwd, "lab"), { recursive: true });
    return cwd;
  };
}
