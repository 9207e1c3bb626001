import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, readdir, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { execa } from "execa";
import { cachePull, serveArtifacts } from "../src/artifacts/index.js";
import { cli } from "./helpers/cli.js";
import { editedLab } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";

/** A stand-in for the internet on loopback: serves fixture files and counts every request. */
interface Upstream {
  base: string;
  hits: Map<string, number>;
  files: Map<string, Buffer>;
  /** Paths that answer 500 this many more times before they work. */
  failures: Map<string, number>;
  server: Server;
}

async function startUpstream(): Promise<Upstream> {
  const hits = new Map<string, number>();
  const files = new Map<string, Buffer>();
  const failures = new Map<string, number>();
  const server = createServer((req, res) => {
    const path = req.url ?? "/";
    hits.set(path, (hits.get(path) ?? 0) + 1);
    const left = failures.get(path) ?? 0;
    if (left > 0) {
      failures.set(path, left - 1);
      res.writeHead(500).end("try again");
      return;
    }
    const body = files.get(path);
    if (!body) {
      res.writeHead(404).end("not found");
      return;
    }
    res.writeHead(200, { "content-length": body.length }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { base: `http://127.0.0.1:${port}`, hits, files, failures, server };
}

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const tmp = useTmpDirs();
let upstream: Upstream;

beforeAll(async () => {
  upstream = await startUpstream();
});
afterAll(async () => {
  upstream.server.closeAllConnections();
  await new Promise((resolve) => upstream.server.close(resolve));
});

/** A three-node lab whose artifacts come from the loopback upstream. */
async function fixtureLab(
  dir: string,
  artifacts: Record<string, { path: string; sha256?: string; kind?: string }>,
) {
  const entries = Object.fromEntries(
    Object.entries(artifacts).map(([name, a]) => [
      name,
      {
        url: `${upstream.base}${a.path}`,
        ...(a.sha256 ? { sha256: a.sha256 } : {}),
        kind: a.kind ?? "binary",
      },
    ]),
  );
  const file = join(dir, "lab.yaml");
  await writeFile(file, editedLab("three-node", [[["artifacts"], entries]]));
  return file;
}

function addFile(path: string, size = 300_000): Buffer {
  const body = randomBytes(size);
  upstream.files.set(path, body);
  return body;
}

describe("k8slab cache pull", () => {
  it("downloads each artifact once, verifies it, and never fetches it twice", async () => {
    const dir = await tmp();
    const etcd = addFile("/a1/etcd", 2_500_000);
    const flannel = addFile("/a1/flanneld");
    const lab = await fixtureLab(dir, {
      etcd: { path: "/a1/etcd", sha256: sha(etcd) },
      flanneld: { path: "/a1/flanneld", sha256: sha(flannel) },
    });
    const env = { K8SLAB_CACHE: join(dir, "cache") };
    const first = await cachePull({ lab, cwd: dir, env });
    expect(first.artifacts.map((a) => [a.name, a.downloaded])).toEqual([
      ["etcd", true],
      ["flanneld", true],
    ]);
    for (const a of first.artifacts) {
      expect(sha(await readFile(a.path))).toBe(a.sha256);
    }
    const second = await cachePull({ lab, cwd: dir, env });
    expect(second.artifacts.every((a) => !a.downloaded)).toBe(true);
    expect(upstream.hits.get("/a1/etcd")).toBe(1);
    expect(upstream.hits.get("/a1/flanneld")).toBe(1);
  });

  it("refuses a corrupt download, naming the artifact and the fix, and keeps nothing of it", async () => {
    const dir = await tmp();
    addFile("/a2/etcd");
    const lab = await fixtureLab(dir, { etcd: { path: "/a2/etcd", sha256: "0".repeat(64) } });
    const env = { K8SLAB_CACHE: join(dir, "cache") };
    await expect(cachePull({ lab, cwd: dir, env })).rejects.toMatchObject({
      message: expect.stringMatching(/artifact etcd is corrupt/),
      hint: expect.stringMatching(/cache pull/),
    });
    const left = await readdir(join(dir, "cache", "artifacts"));
    expect(left).toEqual([]);
  });

  it("retries a transient server error and gives up on a missing file at once", async () => {
    const dir = await tmp();
    const body = addFile("/a3/etcd");
    upstream.failures.set("/a3/etcd", 1);
    const lab = await fixtureLab(dir, { etcd: { path: "/a3/etcd", sha256: sha(body) } });
    const env = { K8SLAB_CACHE: join(dir, "cache") };
    const events: string[] = [];
    await cachePull({ lab, cwd: dir, env, onProgress: (p) => events.push(p.event) });
    expect(events).toContain("retry");
    expect(upstream.hits.get("/a3/etcd")).toBe(2);

    const missing = await fixtureLab(dir, { gone: { path: "/a3/gone", sha256: "1".repeat(64) } });
    await expect(cachePull({ lab: missing, cwd: dir, env })).rejects.toThrow(
      /gone: .* answered HTTP 404/,
    );
    expect(upstream.hits.get("/a3/gone")).toBe(1);
  });

  it("without a sha256: refuses unless --pin, then verifies against the pinned checksum", async () => {
    const dir = await tmp();
    const body = addFile("/a4/flannel");
    const lab = await fixtureLab(dir, { flannel: { path: "/a4/flannel" } });
    const env = { K8SLAB_CACHE: join(dir, "cache") };
    await expect(cachePull({ lab, cwd: dir, env })).rejects.toMatchObject({
      hint: expect.stringContaining("--pin"),
    });
    const pinned = await cachePull({ lab, cwd: dir, env, pin: true });
    expect(pinned.artifacts[0]).toMatchObject({
      sha256: sha(body),
      pinned: true,
      downloaded: true,
    });
    const pins = JSON.parse(await readFile(join(dir, "cache", "pins.json"), "utf8")) as Record<
      string,
      string
    >;
    expect(Object.values(pins)).toEqual([sha(body)]);
    const again = await cachePull({ lab, cwd: dir, env });
    expect(again.artifacts[0]!.downloaded).toBe(false);
    // Upstream now serves something else: once the cached copy is gone, the pin refuses it.
    upstream.files.set("/a4/flannel", randomBytes(1000));
    await rm(pinned.artifacts[0]!.path);
    await expect(cachePull({ lab, cwd: dir, env })).rejects.toMatchObject({
      message: expect.stringMatching(/artifact flannel is corrupt/),
      hint: expect.stringMatching(/pins\.json/),
    });
  });

  it("the CLI shows progress and exits 1 with a hint on failure", async () => {
    const dir = await tmp();
    const body = addFile("/a5/etcd", 3_000_000);
    const lab = await fixtureLab(dir, { etcd: { path: "/a5/etcd", sha256: sha(body) } });
    const env = { ...process.env, K8SLAB_CACHE: join(dir, "cache") };
    const ok = await cli(["cache", "pull", lab], { cwd: dir, env });
    expect(ok.code).toBe(0);
    expect(ok.stderr).toMatch(/etcd: downloading/);
    expect(ok.stderr).toMatch(/etcd: downloaded and verified \(3\.0 MB\)/);
    const bad = await fixtureLab(dir, { etcd: { path: "/a5/etcd", sha256: "2".repeat(64) } });
    const failed = await cli(["cache", "pull", bad], { cwd: dir, env });
    expect(failed.code).toBe(1);
    expect(failed.stderr).toMatch(/error: artifact etcd is corrupt/);
    expect(failed.stderr).toMatch(/hint: /);
  });
});

describe("serving the cache to the VMs", () => {
  it("one upstream download per artifact however many nodes fetch it", async () => {
    const dir = await tmp();
    const body = addFile("/a6/kube", 1_500_000);
    const lab = await fixtureLab(dir, { kube: { path: "/a6/kube", sha256: sha(body) } });
    const { artifacts } = await cachePull({
      lab,
      cwd: dir,
      env: { K8SLAB_CACHE: join(dir, "cache") },
    });
    const server = await serveArtifacts(artifacts, {
      advertise: "127.0.0.1",
      listen: "127.0.0.1",
      allow: [],
    });
    try {
      for (const node of ["master", "minion1", "minion2"]) {
        const out = join(dir, `${node}.bin`);
        await execa("curl", ["-fsS", "--max-time", "30", "-o", out, `${server.url}/kube`]);
        expect(sha(await readFile(out))).toBe(sha(body));
      }
      const checksum = await execa("curl", [
        "-fsS",
        "--max-time",
        "10",
        `${server.url}/kube.sha256`,
      ]);
      expect(checksum.stdout.trim()).toBe(sha(body));
      const missing = await execa("curl", [
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        `${server.url}/nope`,
      ]);
      expect(missing.stdout).toBe("404");
      expect(server.served.get("kube")).toBe(3);
      expect(upstream.hits.get("/a6/kube")).toBe(1);
    } finally {
      await server.close();
    }
    const after = await execa("curl", ["-sS", "--max-time", "5", `${server.url}/kube`], {
      reject: false,
    });
    expect(after.exitCode).not.toBe(0);
    expect(existsSync(join(dir, "cache", "artifacts"))).toBe(true);
  });
});
