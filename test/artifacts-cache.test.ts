import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { join } from "node:path";
import { execa } from "execa";
import { cachePull, serveArtifacts, type PullProgress } from "../src/artifacts/index.js";
import { packageRoot } from "../src/util/package-root.js";
import { cli } from "./helpers/cli.js";
import { cliArgv } from "./helpers/cli-process.js";
import { editedLab, OFFLINE } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";
import { closeUpstream, startUpstream, type Upstream } from "./helpers/upstream.js";

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const tmp = useTmpDirs();
let upstream: Upstream;

beforeAll(async () => {
  upstream = await startUpstream();
});
afterAll(async () => {
  await closeUpstream(upstream);
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
  await writeFile(file, editedLab("three-node", [...OFFLINE, [["artifacts"], entries]]));
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

  it("without a sha256: the first download is recorded and reported, then every use verified against it", async () => {
    const dir = await tmp();
    const body = addFile("/a4/flannel");
    const lab = await fixtureLab(dir, { flannel: { path: "/a4/flannel" } });
    const env = { K8SLAB_CACHE: join(dir, "cache") };
    const events: PullProgress[] = [];
    const first = await cachePull({ lab, cwd: dir, env, onProgress: (p) => events.push(p) });
    expect(first.artifacts[0]).toMatchObject({
      sha256: sha(body),
      pinned: true,
      recorded: true,
      downloaded: true,
    });
    expect(events.find((e) => e.event === "recorded")).toMatchObject({
      name: "flannel",
      sha256: sha(body),
    });
    const pins = JSON.parse(await readFile(join(dir, "cache", "pins.json"), "utf8")) as Record<
      string,
      string
    >;
    expect(Object.values(pins)).toEqual([sha(body)]);
    const again = await cachePull({ lab, cwd: dir, env });
    expect(again.artifacts[0]).toMatchObject({ downloaded: false, pinned: true, recorded: false });
    // Upstream now serves something else: once the cached copy is gone, the record refuses it.
    upstream.files.set("/a4/flannel", randomBytes(1000));
    await rm(first.artifacts[0]!.path);
    await expect(cachePull({ lab, cwd: dir, env })).rejects.toMatchObject({
      message: expect.stringMatching(/artifact flannel is corrupt/),
      hint: expect.stringMatching(new RegExp(`pins\\.json and run k8slab cache pull ${lab}$`)),
    });
  });

  it("decides every artifact's verification before the first download", async () => {
    const dir = await tmp();
    const body = addFile("/a7/big", 1_000_000);
    const lab = await fixtureLab(dir, {
      big: { path: "/a7/big", sha256: sha(body) },
      small: { path: "/a7/small" },
    });
    await mkdir(join(dir, "cache"), { recursive: true });
    await writeFile(join(dir, "cache", "pins.json"), '{"http://x/": "not a sha"}');
    const env = { K8SLAB_CACHE: join(dir, "cache") };
    await expect(cachePull({ lab, cwd: dir, env })).rejects.toMatchObject({
      message: expect.stringMatching(/pins\.json .* is corrupt/),
      hint: expect.stringMatching(/^remove .*pins\.json/),
    });
    expect(upstream.hits.get("/a7/big")).toBeUndefined();
  });

  it("a damaged copy in the cache is fetched again, never served", async () => {
    const dir = await tmp();
    const body = addFile("/a8/etcd", 500_000);
    const lab = await fixtureLab(dir, { etcd: { path: "/a8/etcd", sha256: sha(body) } });
    const env = { K8SLAB_CACHE: join(dir, "cache") };
    const [pulled] = (await cachePull({ lab, cwd: dir, env })).artifacts;
    const damaged = Buffer.from(body);
    damaged[1000] = damaged[1000]! ^ 0xff;
    await writeFile(pulled!.path, damaged);
    const events: string[] = [];
    const again = await cachePull({ lab, cwd: dir, env, onProgress: (p) => events.push(p.event) });
    expect(events).toEqual(expect.arrayContaining(["damaged", "start", "done"]));
    expect(events).not.toContain("cached");
    expect(again.artifacts[0]!.downloaded).toBe(true);
    expect(sha(await readFile(pulled!.path))).toBe(sha(body));
    expect(upstream.hits.get("/a8/etcd")).toBe(2);
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
    expect(failed.stderr).toContain(`run k8slab cache pull ${bad} again`);
    expect(failed.stderr).not.toContain("<lab>");
    // No published checksum: recorded, and the CLI prints it (--pin is still accepted).
    const plain = addFile("/a5/flanneld");
    const unpinned = await fixtureLab(dir, { flanneld: { path: "/a5/flanneld" } });
    for (const args of [[], ["--pin"]]) {
      const pulled = await cli(["cache", "pull", unpinned, ...args], { cwd: dir, env });
      expect(pulled.code, pulled.stderr).toBe(0);
    }
    const recorded = await cli(["cache", "pull", unpinned], {
      cwd: dir,
      env: { ...env, K8SLAB_CACHE: join(dir, "cache2") },
    });
    expect(recorded.stderr).toContain(
      `flanneld: its upstream publishes no sha256; recorded the first download's: ${sha(plain)}`,
    );
  });
});

describe("k8slab create and the artifacts", () => {
  it("create says what it downloads and prints the sha256 it records, before any VM boots", async () => {
    const dir = await tmp();
    const plain = addFile("/c1/etcd", 2_000_000);
    const lab = await fixtureLab(dir, { etcd: { path: "/c1/etcd" } });
    // Vagrant stands in with machines that never exist: create stops after the download.
    const calls = join(dir, "calls.log");
    await writeFile(calls, "");
    await writeFile(join(dir, "nodes"), "");
    await mkdir(join(dir, "state"));
    const run = await execa(
      cliArgv()[0]!,
      [...cliArgv().slice(1), "create", lab, "--dir", "lab", "--provider", "libvirt"],
      {
        cwd: dir,
        reject: false,
        timeout: 240_000,
        env: {
          PATH: `${join(packageRoot(), "test", "fixtures", "fake-vagrant-nspawn")}:${process.env.PATH ?? ""}`,
          K8SLAB_CACHE: join(dir, "cache"),
          FAKE_VAGRANT_NODES: join(dir, "nodes"),
          FAKE_VAGRANT_STATE: join(dir, "state"),
          FAKE_VAGRANT_LOG: calls,
          CI: "1",
        },
      },
    );
    const recorded = `etcd: its upstream publishes no sha256; recorded the first download's: ${sha(plain)}`;
    expect(run.stderr, run.stderr).toContain("etcd: downloading");
    expect(run.stderr).toContain(recorded);
    expect(run.stderr.indexOf(recorded)).toBeLessThan(run.stderr.indexOf("vagrant up"));
    expect(run.stderr).not.toContain("<lab>");
    expect(await readFile(calls, "utf8")).toMatch(/^up /m);
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
      listen: ["127.0.0.1"],
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

/** Send raw bytes to a server and return the status code of the answer ("" when none). */
function rawRequest(port: number, request: string | Buffer, host = "127.0.0.1"): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host });
    let answer = "";
    socket.setTimeout(10_000, () => socket.destroy(new Error("no answer within 10 s")));
    socket.on("data", (chunk) => (answer += chunk.toString("latin1")));
    socket.on("error", (error) =>
      (error as NodeJS.ErrnoException).code === "ECONNRESET" ? resolve(status()) : reject(error),
    );
    socket.on("close", () => resolve(status()));
    const status = () => /^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? "";
    socket.end(request);
  });
}

describe("the artifact server under malformed requests", () => {
  it("answers each with 400 or 404 and keeps serving", async () => {
    const dir = await tmp();
    const body = addFile("/a9/kube", 200_000);
    const lab = await fixtureLab(dir, { kube: { path: "/a9/kube", sha256: sha(body) } });
    const env = { K8SLAB_CACHE: join(dir, "cache") };
    const { artifacts } = await cachePull({ lab, cwd: dir, env });
    const server = await serveArtifacts(artifacts, {
      advertise: "127.0.0.1",
      listen: ["127.0.0.1"],
      allow: [],
    });
    try {
      const get = (target: string) => `GET ${target} HTTP/1.1\r\nHost: x\r\n\r\n`;
      const cases: [string | Buffer, RegExp][] = [
        [get("/%"), /^400$/],
        [get("/%E0%A4%A"), /^400$/],
        [get("/%ZZ"), /^400$/],
        [get("/../../etc/passwd"), /^400$/],
        [get("/%2e%2e%2f%2e%2e%2fetc%2fpasswd"), /^400$/],
        [get("/kube/../kube"), /^400$/],
        [get("/kube%00"), /^400$/],
        [get("/kube%2f"), /^400$/],
        [get("*"), /^400$/],
        [get("http://elsewhere/kube"), /^400$/],
        [get(""), /^400$/],
        [get(`/${"a".repeat(100_000)}`), /^4\d\d$/],
        [get("/nope"), /^404$/],
        [get("/nope.sha256"), /^404$/],
        ["BREW /kube HTTP/1.1\r\nHost: x\r\n\r\n", /^4\d\d$/],
        ["GET /kube HTTP/1.1\r\nContent-Length: abc\r\n\r\n", /^400$/],
        ["GET /kube HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", /^400$/],
        [Buffer.from([0, 1, 2, 3, 13, 10, 13, 10]), /^400$/],
        ["GARBAGE\r\n\r\n", /^400$/],
      ];
      for (const [request, expected] of cases) {
        const shown = JSON.stringify(String(request).slice(0, 60));
        expect(await rawRequest(server.port, request), shown).toMatch(expected);
      }
      const out = join(dir, "kube.bin");
      await execa("curl", ["-fsS", "--max-time", "30", "-o", out, `${server.url}/kube`]);
      expect(sha(await readFile(out))).toBe(sha(body));
    } finally {
      await server.close();
    }
  });

  it("listens only on the addresses it is given, all on one port", async () => {
    const dir = await tmp();
    const body = addFile("/a10/kube", 1000);
    const lab = await fixtureLab(dir, { kube: { path: "/a10/kube", sha256: sha(body) } });
    const { artifacts } = await cachePull({ lab, cwd: dir, env: { K8SLAB_CACHE: join(dir, "c") } });
    const server = await serveArtifacts(artifacts, {
      advertise: "127.0.0.2",
      listen: ["127.0.0.2", "127.0.0.1"],
      allow: [],
    });
    try {
      expect(server.url).toBe(`http://127.0.0.2:${server.port}`);
      for (const host of ["127.0.0.1", "127.0.0.2"]) {
        expect(
          await rawRequest(server.port, "GET /kube.sha256 HTTP/1.1\r\nHost: x\r\n\r\n", host),
        ).toBe("200");
      }
      // Any other address of the host (here another loopback one) is refused: not 0.0.0.0.
      await expect(
        rawRequest(server.port, "GET /kube HTTP/1.1\r\n\r\n", "127.0.0.3"),
      ).rejects.toMatchObject({ code: "ECONNREFUSED" });
    } finally {
      await server.close();
    }
    // An address this host does not have: a message with the reason, no listener left behind.
    await expect(
      serveArtifacts(artifacts, { advertise: "192.0.2.1", listen: ["192.0.2.1"], allow: [] }),
    ).rejects.toMatchObject({
      message: expect.stringMatching(/cannot serve .* 192\.0\.2\.1 .*EADDRNOTAVAIL/),
      hint: expect.stringMatching(/not on this host/),
    });
  });
});
