import { afterEach, describe, expect, it } from "vitest";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { readFileSync, realpathSync } from "node:fs";
import { chmod, copyFile, mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { execa } from "execa";
import { validateLabText } from "../src/lab/load.js";
import type { Lab } from "../src/lab/schema.js";
import {
  artifactsFor,
  cachedImages,
  imageArtifactName,
  imageName,
  planLab,
  type NodePlan,
} from "../src/plan/plan.js";
import { renderLabDir } from "../src/render/index.js";
import { builtinText, editedLab, lines, OFFLINE, problemsOf } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";

/**
 * The lab's container images come from the host cache: which images each node gets (plan), what
 * the lab file may say about them (rules), what the provisioners say (rendering), and the pause
 * container's fallback init, run for real as the PID 1 of a PID namespace.
 */
const tmp = useTmpDirs();

const PAUSE_INIT_PATH = join(
  import.meta.dirname,
  "..",
  "vagrant-templates",
  "provision",
  "_pause-init.ejs",
);
const PAUSE_INIT = readFileSync(PAUSE_INIT_PATH, "utf8");
const DIGEST = `sha256:${"0123456789abcdef".repeat(4)}`;
const ADDON_IMAGES = ["image-kube-dns", "image-dnsmasq", "image-dns-sidecar", "image-dashboard"];

type Edits = Parameters<typeof editedLab>[1];

/** The built-in three-node lab with these edits, parsed by the real loader; it must have no errors. */
function threeNode(edits: Edits = []): Lab {
  const { lab, problems } = validateLabText("lab.yaml", editedLab("three-node", edits));
  expect(problems.filter((p) => p.severity === "error")).toEqual([]);
  expect(lab).toBeDefined();
  return lab!;
}

function imagesOf(node: NodePlan): string[] {
  return node.artifacts.filter((a) => a.kind === "image").map((a) => a.name);
}

function byName(lab: Lab): Record<string, string[]> {
  return Object.fromEntries(planLab(lab).nodes.map((n) => [n.name, imagesOf(n)]));
}

describe("the images a node gets from the host cache (plan)", () => {
  it("imageName drops only a trailing sha256 digest; imageArtifactName names keys in kebab case", () => {
    expect(imageName(`reg.example:5000/team/web:1.0@${DIGEST}`)).toBe(
      "reg.example:5000/team/web:1.0",
    );
    expect(imageName("reg.example:5000/team/web:1.0")).toBe("reg.example:5000/team/web:1.0");
    expect(imageName("reg.example/web:1.0@sha256:abc")).toBe("reg.example/web:1.0@sha256:abc");
    expect(imageArtifactName("pause")).toBe("image-pause");
    expect(imageArtifactName("hyperkube")).toBe("image-hyperkube");
    expect(imageArtifactName("kubeDns")).toBe("image-kube-dns");
    expect(imageArtifactName("dnsSidecar")).toBe("image-dns-sidecar");
    expect(imageArtifactName({ preload: "web" })).toBe("image-preload-web");
  });

  it("three-node: every node gets pause and the addons' images, none gets hyperkube (built by default)", () => {
    const { lab } = validateLabText("three-node.yaml", builtinText("three-node"));
    expect(lab).toBeDefined();
    expect(lab!.images.build).toEqual(["hyperkube"]);
    expect(lab!.addons).toEqual(["kube-dns", "dashboard"]);
    const refs = {
      "image-pause": lab!.images.pause,
      "image-kube-dns": lab!.images.kubeDns,
      "image-dnsmasq": lab!.images.dnsmasq,
      "image-dns-sidecar": lab!.images.dnsSidecar,
      "image-dashboard": lab!.images.dashboard,
    };
    expect(cachedImages(lab!).map((a) => [a.name, a.kind, a.url, a.image, a.roles])).toEqual(
      Object.entries(refs).map(([name, ref]) => [name, "image", `docker://${ref}`, ref, undefined]),
    );
    const plan = planLab(lab!);
    expect(plan.nodes.map((n) => n.name)).toEqual(["master", "minion1", "minion2"]);
    for (const node of plan.nodes) {
      expect(imagesOf(node), node.name).toEqual(Object.keys(refs));
      expect(artifactsFor(node, lab!), node.name).toEqual(node.artifacts);
      // The lab's own artifacts are still there, before the images.
      expect(node.artifacts.map((a) => a.name).slice(0, 4), node.name).toEqual([
        "kubernetes-server",
        "etcd",
        "flannel",
        "docker",
      ]);
    }
  });

  it("images.build [hyperkube, pause]: no node gets image-pause; the addons' images stay", () => {
    const images = byName(
      threeNode([
        [
          ["images", "build"],
          ["hyperkube", "pause"],
        ],
      ]),
    );
    expect(images).toEqual({ master: ADDON_IMAGES, minion1: ADDON_IMAGES, minion2: ADDON_IMAGES });
  });

  it("images.build []: image-hyperkube goes to the control-plane node only", () => {
    const lab = threeNode([[["images", "build"], []]]);
    const images = byName(lab);
    expect(images.master).toEqual(["image-hyperkube", "image-pause", ...ADDON_IMAGES]);
    expect(images.minion1).toEqual(["image-pause", ...ADDON_IMAGES]);
    expect(images.minion2).toEqual(["image-pause", ...ADDON_IMAGES]);
    const hyperkube = planLab(lab).master.artifacts.find((a) => a.name === "image-hyperkube");
    expect(hyperkube).toMatchObject({
      kind: "image",
      url: "docker://gcr.io/google_containers/hyperkube:v1.9.3",
      image: "gcr.io/google_containers/hyperkube:v1.9.3",
      roles: ["control-plane"],
    });
  });

  it("images.preload gives every node image-preload-<name>, pulled by digest, named without it", () => {
    const lab = threeNode([
      [
        ["images", "preload"],
        { web: "reg.example:5000/team/web:1.0", db: `reg.example:5000/team/db:2.1@${DIGEST}` },
      ],
    ]);
    for (const node of planLab(lab).nodes) {
      expect(imagesOf(node), node.name).toEqual([
        "image-pause",
        ...ADDON_IMAGES,
        "image-preload-web",
        "image-preload-db",
      ]);
      const preloaded = node.artifacts.filter((a) => a.name.startsWith("image-preload-"));
      expect(preloaded.map((a) => [a.url, a.image, a.roles])).toEqual([
        ["docker://reg.example:5000/team/web:1.0", "reg.example:5000/team/web:1.0", undefined],
        [
          `docker://reg.example:5000/team/db:2.1@${DIGEST}`,
          "reg.example:5000/team/db:2.1",
          undefined,
        ],
      ]);
    }
  });

  it("an image pinned name:tag@sha256 is pulled by digest but rendered everywhere without it", async () => {
    const pinned = {
      hyperkube: "gcr.io/google_containers/hyperkube:v1.9.3",
      pause: "gcr.io/google_containers/pause-amd64:3.1",
      kubeDns: "gcr.io/google_containers/k8s-dns-kube-dns-amd64:1.14.7",
      dnsmasq: "gcr.io/google_containers/k8s-dns-dnsmasq-nanny-amd64:1.14.7",
      dnsSidecar: "gcr.io/google_containers/k8s-dns-sidecar-amd64:1.14.7",
      dashboard: "k8s.gcr.io/kubernetes-dashboard-amd64:v1.8.0",
    };
    const edits: Edits = [
      [["images", "build"], []],
      ...Object.entries(pinned).map(([key, ref]): Edits[number] => [
        ["images", key],
        `${ref}@${DIGEST}`,
      ]),
    ];
    const lab = threeNode(edits);
    expect(lab.images.pause).toBe(`${pinned.pause}@${DIGEST}`);
    const plan = planLab(lab);
    expect(plan.images).toEqual(pinned);
    expect(plan.master.artifacts.filter((a) => a.kind === "image").map((a) => a.url)).toEqual(
      [
        pinned.hyperkube,
        pinned.pause,
        pinned.kubeDns,
        pinned.dnsmasq,
        pinned.dnsSidecar,
        pinned.dashboard,
      ].map((ref) => `docker://${ref}@${DIGEST}`),
    );

    const cwd = await tmp();
    await writeFile(join(cwd, "lab.yaml"), editedLab("three-node", edits));
    const { dir, files } = await renderLabDir({ lab: "lab.yaml", cwd, dir: "lab" });
    const read = (rel: string) => readFile(join(dir, rel), "utf8");
    const scripts = files.filter((f) => f.startsWith("provision/"));
    expect(scripts.length).toBeGreaterThan(20);
    for (const rel of scripts) expect(await read(rel), rel).not.toContain(DIGEST.slice(7));

    for (const node of ["master", "minion1", "minion2"]) {
      expect(await read(`provision/${node}/kubelet.sh`)).toContain(
        `  --pod-infra-container-image=${pinned.pause} \\\\\n`,
      );
    }
    const controlPlane = await read("provision/master/control-plane.sh");
    const staticPodImages = [...controlPlane.matchAll(/^ +image: (\S+)$/gm)].map((m) => m[1]);
    expect(staticPodImages).toEqual([pinned.hyperkube, pinned.hyperkube, pinned.hyperkube]);
    expect(controlPlane).toContain(`image inspect -f '{{ .Id }}' ${pinned.hyperkube} 2>/dev/null`);
    const addons = await read("provision/master/addons.sh");
    expect([...addons.matchAll(/^ +image: (\S+)$/gm)].map((m) => m[1])).toEqual([
      pinned.kubeDns,
      pinned.dnsmasq,
      pinned.dnsSidecar,
      pinned.dashboard,
    ]);
    expect(await read("provision/master/docker.sh")).toContain(
      `load_image image-hyperkube ${pinned.hyperkube}\nload_image image-pause ${pinned.pause}\n`,
    );
  });

  it("the artifacts phase exists on a node that has only images, and not on one with neither", async () => {
    const onlyImages = planLab(threeNode([[["artifacts"], {}]]));
    for (const node of onlyImages.nodes) {
      expect(node.phases, node.name).toContain("artifacts");
      expect(node.artifacts.length, node.name).toBeGreaterThan(0);
      expect(
        node.artifacts.filter((a) => a.kind !== "image"),
        node.name,
      ).toEqual([]);
    }
    const neither = planLab(threeNode(OFFLINE));
    for (const node of neither.nodes) {
      expect(node.artifacts, node.name).toEqual([]);
      expect(node.phases, node.name).not.toContain("artifacts");
      expect(node.phases, node.name).toContain("docker");
    }

    // What the renderer makes of it: an artifacts.sh that fetches the images, or none at all.
    const cwd = await tmp();
    await writeFile(join(cwd, "images.yaml"), editedLab("three-node", [[["artifacts"], {}]]));
    await writeFile(join(cwd, "offline.yaml"), editedLab("three-node", OFFLINE));
    const images = await renderLabDir({ lab: "images.yaml", cwd, dir: "images" });
    const offline = await renderLabDir({ lab: "offline.yaml", cwd, dir: "offline" });
    const artifactScripts = (files: string[]) => files.filter((f) => f.endsWith("/artifacts.sh"));
    expect(artifactScripts(images.files)).toEqual([
      "provision/master/artifacts.sh",
      "provision/minion1/artifacts.sh",
      "provision/minion2/artifacts.sh",
    ]);
    expect(artifactScripts(offline.files)).toEqual([]);
    const fetches = (await readFile(join(images.dir, "provision/minion1/artifacts.sh"), "utf8"))
      .split("\n")
      .filter((l) => l.startsWith("fetch "));
    expect(fetches).toEqual(["image-pause", ...ADDON_IMAGES].map((n) => `fetch ${n} ''`));
  });
});

describe("what a lab file may say about its images (rules)", () => {
  const errorsOf = (text: string) => problemsOf(text).filter((p) => p.severity === "error");
  const imageArtifact = { url: "https://example.com/pause.tar", kind: "image" };

  it("an artifact named image-pause is an error naming artifacts.image-pause", () => {
    const text = editedLab("three-node", [[["artifacts", "image-pause"], imageArtifact]]);
    expect(lines(problemsOf(text))).toEqual([
      expect.stringMatching(
        /^lab\.yaml:\d+:\d+ artifacts\.image-pause: the name image-pause is the one the host serves an image under\n {4}hint: name the artifact otherwise$/,
      ),
    ]);
    expect(errorsOf(text).map((p) => p.path)).toEqual(["artifacts.image-pause"]);
    // The same name is free when the nodes make the pause image themselves.
    const built = editedLab("three-node", [
      [["artifacts", "image-pause"], imageArtifact],
      [
        ["images", "build"],
        ["hyperkube", "pause"],
      ],
    ]);
    expect(lines(problemsOf(built))).toEqual([]);
  });

  it.each([
    ["without a tag", "reg.example:5000/team/web"],
    ["tagged latest", "reg.example:5000/team/web:latest"],
    ["with only a digest", `reg.example:5000/team/web@${DIGEST}`],
  ])("a preloaded image %s is an error", (_, ref) => {
    const text = editedLab("three-node", [[["images", "preload"], { web: ref }]]);
    expect(errorsOf(text).map((p) => [p.path, p.message])).toEqual([
      [
        "images.preload.web",
        "needs a tag other than latest: the kubelet pulls a :latest image on every start",
      ],
    ]);
    const tagged = editedLab("three-node", [
      [["images", "preload"], { web: "reg.example:5000/team/web:1.0" }],
    ]);
    expect(lines(problemsOf(tagged))).toEqual([]);
  });

  it("images.build with hyperkube and no artifact installing a hyperkube program is a warning", () => {
    const noHyperkube = editedLab("three-node", [
      [
        ["artifacts", "kubernetes-server", "install"],
        { "kubernetes/server/bin/kubelet": "kubelet", "kubernetes/server/bin/kubectl": "kubectl" },
      ],
    ]);
    const problems = problemsOf(noHyperkube);
    expect(problems.map((p) => [p.severity, p.path])).toEqual([["warning", "images.build"]]);
    expect(problems[0]!.message).toMatch(/no artifact installs one/);
    expect(problems[0]!.hint).toMatch(/kubernetes\/server\/bin\/hyperkube: hyperkube/);

    // kubernetes-server installs it in the built-in lab: nothing to say.
    expect(lines(problemsOf(builtinText("three-node")))).toEqual([]);
    // A binary artifact named hyperkube is the program too.
    const binary = editedLab("three-node", [
      [
        ["artifacts", "kubernetes-server", "install"],
        { "kubernetes/server/bin/kubelet": "kubelet" },
      ],
      [["artifacts", "hyperkube"], { url: "https://example.com/hyperkube", kind: "binary" }],
    ]);
    expect(lines(problemsOf(binary))).toEqual([]);
    // An archive that installs it only on the workers does not count for the master.
    const workersOnly = editedLab("three-node", [
      [["artifacts", "kubernetes-server", "roles"], ["worker"]],
    ]);
    expect(problemsOf(workersOnly).map((p) => [p.severity, p.path])).toEqual([
      ["warning", "images.build"],
    ]);
    // Without hyperkube in images.build, its image comes from the host cache.
    const fromCache = editedLab("three-node", [
      [
        ["artifacts", "kubernetes-server", "install"],
        { "kubernetes/server/bin/kubelet": "kubelet" },
      ],
      [["images", "build"], []],
    ]);
    expect(lines(problemsOf(fromCache))).toEqual([]);
  });

  it("a mirror whose key or value is not a registry host[:port][/path] is an error", () => {
    const badKey = editedLab("three-node", [
      [["images", "mirrors"], { "Gcr.io/google_containers": "registry.k8s.io" }],
    ]);
    // The key's own message, at the key (not the value's column).
    expect(errorsOf(badKey).map((p) => [p.path, p.message, p.col])).toEqual([
      [
        "images.mirrors.Gcr.io/google_containers",
        'key "Gcr.io/google_containers" must be a registry host[:port], optionally with a path',
        5,
      ],
    ]);
    const badValue = editedLab("three-node", [
      [["images", "mirrors"], { "gcr.io": "https://registry.k8s.io" }],
    ]);
    expect(errorsOf(badValue).map((p) => [p.path, p.message])).toEqual([
      ["images.mirrors.gcr.io", "must be a registry host[:port], optionally with a path"],
    ]);
    const good = editedLab("three-node", [
      [["images", "mirrors"], { "gcr.io/google_containers": "10.0.0.5:5000/mirror" }],
    ]);
    expect(lines(problemsOf(good))).toEqual([]);
  });

  it("repeated images.build entries are an error", () => {
    const text = editedLab("three-node", [
      [
        ["images", "build"],
        ["pause", "hyperkube", "pause"],
      ],
    ]);
    expect(errorsOf(text).map((p) => [p.path, p.message])).toEqual([
      ["images.build", "must not repeat"],
    ]);
  });
});

describe("rendering the pause fallback init", () => {
  it("images.build [hyperkube, pause]: every docker.sh writes the init as a heredoc and passes shellcheck -S warning", async () => {
    const cwd = await tmp();
    await writeFile(
      join(cwd, "lab.yaml"),
      editedLab("three-node", [
        [
          ["images", "build"],
          ["hyperkube", "pause"],
        ],
      ]),
    );
    const { dir, files } = await renderLabDir({ lab: "lab.yaml", cwd, dir: "lab" });
    const dockerScripts = files.filter((f) => f.endsWith("/docker.sh"));
    expect(dockerScripts).toEqual([
      "provision/master/docker.sh",
      "provision/minion1/docker.sh",
      "provision/minion2/docker.sh",
    ]);
    for (const rel of dockerScripts) {
      const script = await readFile(join(dir, rel), "utf8");
      expect(script, rel).toContain(
        `put_file /opt/k8slab/files/pause-init 0755 <<'INIT'\n${PAUSE_INIT}INIT\n`,
      );
      expect(script, rel).toContain(
        `'["/init"]' "/init=/opt/k8slab/files/pause-init" "/bin/sh=$(readlink -f /bin/sh)" "/sleep=$sleep_bin"`,
      );
      expect(script, rel).not.toContain("load_image image-pause");
    }
    const sc = await execa(
      "shellcheck",
      ["-S", "warning", ...dockerScripts.map((f) => join(dir, f))],
      {
        reject: false,
        all: true,
        timeout: 120_000,
      },
    );
    expect(sc.all).toBe("");
    expect(sc.exitCode).toBe(0);
  });

  it("_pause-init.ejs passes shellcheck -s sh", async () => {
    expect(PAUSE_INIT.startsWith("#!/bin/sh\n")).toBe(true);
    const sc = await execa("shellcheck", ["-s", "sh", PAUSE_INIT_PATH], {
      reject: false,
      all: true,
      timeout: 120_000,
    });
    expect(sc.all).toBe("");
    expect(sc.exitCode).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------
// The pause fallback init as the PID 1 of a real PID namespace.

const POLL_MS = 100;

/** Poll every 100 ms until probe returns a value, at most limitMs; throws naming what it waited for. */
async function until<T>(
  what: string | (() => string),
  limitMs: number,
  probe: () => Promise<T | undefined>,
): Promise<T> {
  const started = Date.now();
  for (let i = 0; i <= Math.ceil(limitMs / POLL_MS); i++) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() - started > limitMs) break;
    await delay(POLL_MS);
  }
  throw new Error(`waited ${limitMs} ms for ${typeof what === "string" ? what : what()}`);
}

interface Proc {
  pid: number;
  state: string;
  ppid: number;
  /** Clock ticks after boot: with the pid, names one process even if the pid is reused. */
  starttime: string;
}

async function procOf(pid: number): Promise<Proc | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // pid (comm) state ppid ...: comm may hold spaces and parentheses, so read after the last ")".
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { pid, state: rest[0]!, ppid: Number(rest[1]), starttime: rest[19]! };
  } catch {
    return undefined;
  }
}

async function cmdlineOf(pid: number): Promise<string[]> {
  try {
    return (await readFile(`/proc/${pid}/cmdline`, "utf8")).split("\0").slice(0, -1);
  } catch {
    return [];
  }
}

async function childrenOf(ppid: number): Promise<Proc[]> {
  const pids = (await readdir("/proc")).filter((e) => /^\d+$/.test(e)).map(Number);
  const procs = await Promise.all(pids.map(procOf));
  return procs.filter((p): p is Proc => p !== undefined && p.ppid === ppid);
}

const zombieChildren = async (ppid: number) =>
  (await childrenOf(ppid)).filter((p) => p.state === "Z").map((p) => p.pid);

/** Why the PID-1 tests cannot run here, or undefined. */
function pid1Unavailable(): string | undefined {
  if (process.platform !== "linux") return "needs Linux";
  if (process.getuid?.() !== 0)
    return "needs root (id -u is not 0) for unshare --pid, chroot and nsenter";
  for (const tool of ["unshare", "nsenter", "chroot", "ldd", "mknod"]) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0) return `needs ${tool}`;
  }
  return undefined;
}
const pid1Skip = pid1Unavailable();

interface Pid1 {
  unshare: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  done: boolean;
  /** The init's pid on the host: the child of unshare. */
  init: number;
  stderr: () => string;
}

describe.skipIf(pid1Skip !== undefined)(
  `the pause fallback init as the PID 1 of a PID namespace${pid1Skip ? ` (skipped: ${pid1Skip})` : ""}`,
  () => {
    const running: Pid1[] = [];

    afterEach(async () => {
      for (const h of running.splice(0)) {
        if (h.done) continue;
        // Killing a namespace's init kills every process in it.
        const init = await procOf(h.init);
        if (init && init.ppid === h.unshare.pid) process.kill(h.init, "SIGKILL");
        const ended = await Promise.race([h.exited.then(() => true), delay(10_000, false)]);
        if (!ended) {
          h.unshare.kill("SIGKILL");
          await Promise.race([h.exited, delay(5_000)]);
        }
      }
    });

    async function libsOf(program: string): Promise<string[]> {
      const { stdout } = await execa("ldd", [program], { timeout: 30_000 });
      return stdout.match(/\/[^\s()]+/g) ?? [];
    }

    /**
     * A root like the pause image's: /init, /bin/sh (the host's /bin/sh, as docker.sh takes it),
     * /sleep and the libraries ldd lists for them; and /dev/null, which Docker gives every
     * container (dash opens it as a background job's stdin).
     */
    async function imageRoot(init: string): Promise<string> {
      const root = await tmp();
      const sh = realpathSync("/bin/sh");
      const sleep = realpathSync((await execa("sh", ["-c", "command -v sleep"])).stdout.trim());
      const put = async (dest: string, src: string) => {
        await mkdir(dirname(join(root, dest)), { recursive: true });
        await copyFile(src, join(root, dest));
        await chmod(join(root, dest), 0o755);
      };
      await writeFile(join(root, "init"), init, { mode: 0o755 });
      await put("/bin/sh", sh);
      await put("/sleep", sleep);
      for (const lib of new Set([...(await libsOf(sh)), ...(await libsOf(sleep))])) {
        await put(lib, lib);
      }
      await mkdir(join(root, "dev"));
      await execa("mknod", ["-m", "666", join(root, "dev", "null"), "c", "1", "3"]);
      return root;
    }

    /** unshare --pid --fork chroot ROOT /init, once /init runs /sleep infinity (itself or a child). */
    async function startPid1(root: string): Promise<Pid1> {
      const unshare = spawn("unshare", ["--pid", "--fork", "chroot", root, "/init"], {
        stdio: ["ignore", "ignore", "pipe"],
      });
      let stderr = "";
      unshare.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
      const h: Pid1 = {
        unshare,
        exited: new Promise((resolve) => {
          unshare.once("exit", (code, signal) => {
            h.done = true;
            resolve({ code, signal });
          });
          unshare.once("error", () => {
            h.done = true;
            resolve({ code: null, signal: null });
          });
        }),
        done: false,
        init: 0,
        stderr: () => stderr,
      };
      running.push(h);
      const pid = unshare.pid!;
      h.init = await until(
        () => `the child of unshare (${pid}); stderr: ${stderr}`,
        10_000,
        async () => (h.done ? undefined : (await childrenOf(pid))[0]?.pid),
      );
      const isSleep = async (p: number) =>
        (await cmdlineOf(p)).join(" ") === "/sleep infinity" ? true : undefined;
      await until(
        () => `${h.init} to run /sleep infinity; stderr: ${stderr}`,
        10_000,
        async () => {
          if (await isSleep(h.init)) return true;
          for (const child of await childrenOf(h.init)) if (await isSleep(child.pid)) return true;
          return undefined;
        },
      );
      // It is the namespace's PID 1: its pid there, the last of NSpid, is 1.
      const status = await readFile(`/proc/${h.init}/status`, "utf8");
      expect(
        status
          .match(/^NSpid:\s+(.*)$/m)?.[1]
          ?.split(/\s+/)
          .at(-1),
      ).toBe("1");
      return h;
    }

    /**
     * A process the init did not start: a shell entered into its PID namespace starts /sleep and
     * exits, so the kernel re-parents the sleep to the namespace's init. It is then killed from
     * the host: it ends as a child of the init, which alone can reap it.
     */
    async function endOrphan(h: Pid1): Promise<Proc> {
      await execa(
        "nsenter",
        [
          "--target",
          String(h.init),
          "--pid",
          "--root",
          "--wd",
          "/bin/sh",
          "-c",
          // Its output goes to /dev/null: holding nsenter's pipes, it would keep execa waiting.
          "/sleep 601 </dev/null >/dev/null 2>&1 & exit 0",
        ],
        { stdin: "ignore", timeout: 30_000 },
      );
      const orphan = await until(
        `the orphan /sleep 601 as a child of ${h.init}`,
        10_000,
        async () => {
          for (const child of await childrenOf(h.init)) {
            if ((await cmdlineOf(child.pid)).join(" ") === "/sleep 601") return child;
          }
          return undefined;
        },
      );
      expect(orphan.ppid).toBe(h.init);
      process.kill(orphan.pid, "SIGKILL");
      return orphan;
    }

    const sameProcess = async (p: Proc) => {
      const now = await procOf(p.pid);
      return now !== undefined && now.starttime === p.starttime ? now : undefined;
    };

    it("starts its sleep again when the sleep is killed (a shell with no child would spin)", async () => {
      const h = await startPid1(await imageRoot(PAUSE_INIT));
      const sleepChild = async () => {
        for (const child of await childrenOf(h.init)) {
          if ((await cmdlineOf(child.pid)).join(" ") === "/sleep infinity") return child;
        }
        return undefined;
      };
      const first = await until(`the init's /sleep infinity`, 10_000, sleepChild);
      process.kill(first.pid, "SIGKILL");
      const second = await until(`a new /sleep infinity under ${h.init}`, 10_000, async () => {
        const child = await sleepChild();
        return child && child.pid !== first.pid ? child : undefined;
      });
      expect(second.ppid).toBe(h.init);
      expect(await zombieChildren(h.init)).toEqual([]);
    });

    it("reaps an orphan re-parented to it: no zombie child of the init is left", async () => {
      const h = await startPid1(await imageRoot(PAUSE_INIT));
      const orphan = await endOrphan(h);
      await until(`${h.init} to reap ${orphan.pid}`, 10_000, async () =>
        (await sameProcess(orphan)) === undefined && (await zombieChildren(h.init)).length === 0
          ? true
          : undefined,
      );
      expect(await zombieChildren(h.init)).toEqual([]);
      // And it is still there, waiting, in front of its sleep.
      expect((await procOf(h.init))?.state).toMatch(/^[SR]$/);
      expect(h.done).toBe(false);
    });

    it("exits with status 0 on SIGTERM", async () => {
      const h = await startPid1(await imageRoot(PAUSE_INIT));
      process.kill(h.init, "SIGTERM");
      const result = await Promise.race([h.exited, delay(15_000, "still running after 15 s")]);
      expect(result, h.stderr()).toEqual({ code: 0, signal: null });
      expect(await procOf(h.init)).toBeUndefined();
    });

    describe("the control: plain sleep as PID 1", () => {
      const plainSleep = "#!/bin/sh\nexec /sleep infinity\n";

      it("leaves the orphan a zombie", async () => {
        const h = await startPid1(await imageRoot(plainSleep));
        const orphan = await endOrphan(h);
        const zombie = await until(`${orphan.pid} to be a zombie`, 3_000, async () => {
          const now = await sameProcess(orphan);
          return now?.state === "Z" ? now : undefined;
        });
        expect(zombie.ppid).toBe(h.init);
        await delay(1_000);
        expect((await sameProcess(orphan))?.state).toBe("Z");
        expect(await zombieChildren(h.init)).toEqual([orphan.pid]);
      });

      it("does not end on SIGTERM", async () => {
        const h = await startPid1(await imageRoot(plainSleep));
        process.kill(h.init, "SIGTERM");
        const result = await Promise.race([h.exited, delay(3_000, "running")]);
        expect(result).toBe("running");
        expect((await procOf(h.init))?.state).toMatch(/^[SR]$/);
      });
    });
  },
);
