import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { execa } from "execa";
import { cachePull, serveArtifacts } from "../src/artifacts/index.js";
import { labDownloads } from "../src/lab/artifact-variants.js";
import { validateLabText } from "../src/lab/load.js";
import { planLab } from "../src/plan/plan.js";
import { renderLab } from "../src/render/render.js";
import { editedLab, lines, OFFLINE, problemsOf } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";

/** Per-architecture artifacts: validation, rendering per node, and one download per variant. */

const tmp = useTmpDirs();
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** The internet on loopback: fixture files, every request counted. */
let upstream: {
  base: string;
  hits: Map<string, number>;
  files: Map<string, Buffer>;
  server: Server;
};

beforeAll(async () => {
  const hits = new Map<string, number>();
  const files = new Map<string, Buffer>();
  const server = createServer((req, res) => {
    const path = req.url ?? "/";
    hits.set(path, (hits.get(path) ?? 0) + 1);
    const body = files.get(path);
    if (!body) return void res.writeHead(404).end("not found");
    res.writeHead(200, { "content-length": body.length }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  upstream = { base: `http://127.0.0.1:${port}`, hits, files, server };
});
afterAll(async () => {
  upstream.server.closeAllConnections();
  await new Promise((resolve) => upstream.server.close(resolve));
});

const FLANNEL_URLS = {
  amd64: { url: "https://example.invalid/flannel-v0.10.0-linux-amd64.tar.gz" },
  arm: { url: "https://example.invalid/flannel-v0.10.0-linux-arm.tar.gz" },
  arm64: { url: "https://example.invalid/flannel-v0.10.0-linux-arm64.tar.gz" },
};

/** three-node with minion1 on arm and minion2 on arm64, and flannel per architecture. */
function mixedLab(
  flannelUrls: Record<string, { url: string; sha256?: string }> = FLANNEL_URLS,
): string {
  return editedLab("three-node", [
    [["nodes", 1, "arch"], "arm"],
    [["nodes", 2, "arch"], "arm64"],
    [["artifacts", "flannel", "url"], undefined],
    [["artifacts", "flannel", "urls"], flannelUrls],
  ]);
}

describe("per-architecture artifacts: validation", () => {
  it("a lab mixing amd64, arm and arm64 nodes with a per-architecture artifact is valid", () => {
    expect(lines(problemsOf(mixedLab()).filter((p) => p.severity === "error"))).toEqual([]);
  });

  it("a node whose architecture an artifact lacks is an error naming the node and the artifact", () => {
    const noArm64 = { amd64: FLANNEL_URLS.amd64, arm: FLANNEL_URLS.arm };
    const problems = problemsOf(mixedLab(noArm64)).filter((p) => p.severity === "error");
    expect(problems.map((p) => [p.path, p.message])).toEqual([
      ["artifacts.flannel.urls", "node minion2 is arm64, and artifacts.flannel has no arm64 url"],
    ]);
    expect(problems[0]!.line).toBeGreaterThan(0);
  });

  it("a role filter excuses the nodes that do not fetch the artifact", () => {
    const text = editedLab("three-node", [
      [["nodes", 1, "arch"], "arm"],
      [["nodes", 2, "arch"], "arm"],
      [["artifacts", "flannel", "url"], undefined],
      [["artifacts", "flannel", "urls"], { amd64: FLANNEL_URLS.amd64 }],
      [["artifacts", "flannel", "roles"], ["control-plane"]],
    ]);
    expect(lines(problemsOf(text).filter((p) => p.severity === "error"))).toEqual([]);
  });

  it("refuses url with urls, a top-level sha256 with urls, a served name taken, and a repeated URL", () => {
    const both = editedLab("three-node", [[["artifacts", "flannel", "urls"], FLANNEL_URLS]]);
    expect(problemsOf(both).map((p) => p.message)).toContain(
      "give exactly one of url (one file for every node) or urls (one per architecture)",
    );
    const topSha = editedLab("three-node", [
      [["artifacts", "flannel", "url"], undefined],
      [["artifacts", "flannel", "sha256"], "a".repeat(64)],
      [["artifacts", "flannel", "urls"], FLANNEL_URLS],
    ]);
    expect(problemsOf(topSha).map((p) => p.path)).toContain("artifacts.flannel.sha256");
    const taken = editedLab("three-node", [
      [["artifacts", "flannel", "url"], undefined],
      [["artifacts", "flannel", "urls"], FLANNEL_URLS],
      [["artifacts", "flannel-arm"], { url: "https://example.invalid/other", kind: "file" }],
    ]);
    expect(lines(problemsOf(taken))).toContainEqual(
      expect.stringContaining(
        "artifacts.flannel-arm: the host serves artifacts.flannel's arm file as flannel-arm too",
      ),
    );
    const repeated = editedLab("three-node", [
      [["artifacts", "flannel", "url"], undefined],
      [["artifacts", "flannel", "urls"], { ...FLANNEL_URLS, arm64: { url: FLANNEL_URLS.arm.url } }],
    ]);
    expect(lines(problemsOf(repeated))).toContainEqual(
      expect.stringContaining(
        "artifacts.flannel.urls.arm64.url: the same URL as artifacts.flannel.urls.arm",
      ),
    );
  });
});

describe("per-architecture artifacts: rendering", () => {
  it("each node's artifacts phase fetches its architecture's file under the artifact's name", async () => {
    const { lab } = validateLabText("mixed.yaml", mixedLab());
    const plan = planLab(lab!);
    expect(plan.nodes.map((n) => [n.name, n.arch])).toEqual([
      ["master", "amd64"],
      ["minion1", "arm"],
      ["minion2", "arm64"],
    ]);
    const files = await renderLab(plan, { labFile: "mixed.yaml" });
    const script = (node: string) =>
      files.find((f) => f.path === `provision/${node}/artifacts.sh`)!.content;
    expect(script("master")).toMatch(/^fetch flannel '' flannel-amd64$/m);
    expect(script("minion1")).toMatch(/^fetch flannel '' flannel-arm$/m);
    expect(script("minion2")).toMatch(/^fetch flannel '' flannel-arm64$/m);
    expect(script("minion1")).toContain("flannel-v0.10.0-linux-arm.tar.gz");
    // Kept under its own name: the flannel phase reads the same program on every node.
    for (const node of ["master", "minion1", "minion2"]) {
      expect(script(node)).toMatch(/^unpack flannel \\\n {2}flanneld flanneld$/m);
      // A single-url artifact is served under its own name, as before.
      expect(script(node)).toMatch(/^fetch etcd ''$/m);
    }
    const dir = await tmp();
    const paths: string[] = [];
    for (const f of files.filter((f) => f.path.endsWith("/artifacts.sh"))) {
      const path = join(dir, f.path.replaceAll("/", "_"));
      await writeFile(path, f.content);
      paths.push(path);
    }
    const sc = await execa("shellcheck", ["-S", "warning", ...paths], { reject: false, all: true });
    expect(sc.all).toBe("");
  });
});

describe("per-architecture artifacts: cache pull", () => {
  it("pulls the file of each architecture the nodes need, once, and serves it by its name", async () => {
    const dir = await tmp();
    const amd64 = randomBytes(200_000);
    const arm = randomBytes(150_000);
    upstream.files.set("/v/flannel-amd64.tgz", amd64);
    upstream.files.set("/v/flannel-arm.tgz", arm);
    const text = editedLab("three-node", [
      ...OFFLINE,
      [["nodes", 1, "arch"], "arm"],
      [["nodes", 2, "arch"], "arm"],
      [
        ["artifacts"],
        {
          flannel: {
            urls: {
              amd64: { url: `${upstream.base}/v/flannel-amd64.tgz`, sha256: sha(amd64) },
              arm: { url: `${upstream.base}/v/flannel-arm.tgz` },
              arm64: { url: `${upstream.base}/v/flannel-arm64.tgz` },
            },
            kind: "file",
          },
        },
      ],
    ]);
    const lab = join(dir, "lab.yaml");
    await writeFile(lab, text);
    expect(labDownloads(validateLabText("lab.yaml", text).lab!).map((d) => d.name)).toEqual([
      "flannel-amd64",
      "flannel-arm",
    ]);
    const env = { K8SLAB_CACHE: join(dir, "cache") };
    await mkdir(env.K8SLAB_CACHE);
    const first = await cachePull({ lab, cwd: dir, env });
    expect(first.artifacts.map((a) => [a.name, a.downloaded, a.recorded])).toEqual([
      ["flannel-amd64", true, false],
      ["flannel-arm", true, true],
    ]);
    const second = await cachePull({ lab, cwd: dir, env });
    expect(second.artifacts.map((a) => [a.name, a.downloaded])).toEqual([
      ["flannel-amd64", false],
      ["flannel-arm", false],
    ]);
    expect(upstream.hits.get("/v/flannel-amd64.tgz")).toBe(1);
    expect(upstream.hits.get("/v/flannel-arm.tgz")).toBe(1);
    expect(upstream.hits.has("/v/flannel-arm64.tgz")).toBe(false);
    // The arm file's sha256 was recorded by URL, like any artifact without one.
    const pins = JSON.parse(await readFile(join(dir, "cache", "pins.json"), "utf8")) as object;
    expect(pins).toEqual({ [`${upstream.base}/v/flannel-arm.tgz`]: sha(arm) });

    const server = await serveArtifacts(second.artifacts, {
      advertise: "127.0.0.1",
      listen: ["127.0.0.1"],
      allow: [],
    });
    try {
      for (const [name, body] of [
        ["flannel-amd64", amd64],
        ["flannel-arm", arm],
      ] as const) {
        const out = join(dir, name);
        await execa("curl", ["-fsS", "--max-time", "30", "-o", out, `${server.url}/${name}`]);
        expect(sha(await readFile(out))).toBe(sha(body));
      }
    } finally {
      await server.close();
    }
  });
});
