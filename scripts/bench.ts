/**
 * Benchmarks, figures only (never a test):
 * - startup: `k8slab --help` and `k8slab labs` against `node -e 0`, and each dependency's import
 *   cost (scripts/bench-startup.ts; needs `npm run build`; 10 runs unless --runs);
 * - pki: ensurePki for the three-node lab (fresh directory, and a re-run that reuses everything)
 *   next to an openssl-CLI baseline that generates the same keys and certificates;
 * - images: image pulls from a local registry (root and network namespaces);
 * - bundle: `cache pull`, `cache export` (with the bundle's size) and `cache import` of the
 *   three-node lab, as processes, against a local archive server and registry.
 * All by default; `npm run bench -- --only startup` (or pki, images, bundle) for some,
 * `npm run bench -- --runs 7` for more runs.
 */
import { execFile } from "node:child_process";
import { generateKeyPair } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { availableParallelism, cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { CertSpec, PkiTopology } from "../src/pki/index.js";
import { ensurePki, planCertificates } from "../src/pki/index.js";
import { threeNodeTopology } from "../test/helpers/pki-fixture.js";
import { benchStartup } from "./bench-startup.js";

const execFileAsync = promisify(execFile);
const generateKeyPairAsync = promisify(generateKeyPair);

interface Stats {
  median: number;
  min: number;
  max: number;
}

function stats(samples: number[]): Stats {
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { median, min: sorted[0]!, max: sorted.at(-1)! };
}

async function timed(action: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await action();
  return performance.now() - start;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  await execFileAsync("openssl", args, { cwd, timeout: 60_000 });
}

/** Run `tasks` with at most `limit` in flight. */
async function pool(tasks: (() => Promise<void>)[], limit: number): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < tasks.length) await tasks[next++]!();
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
}

function subjectArg(spec: Pick<CertSpec, "subject">): string {
  const parts = [
    ...spec.subject.organizations.map((o) => `O=${o}`),
    `CN=${spec.subject.commonName}`,
  ];
  return `/${parts.join("/")}`;
}

/** The same CA, leaves and service-account pair, one `openssl` process per key and certificate. */
async function opensslBaseline(
  topology: PkiTopology,
  dir: string,
  parallel: number,
): Promise<void> {
  const config = join(dir, "req.cnf");
  await writeFile(config, "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n");
  const days = String(topology.validityDays);
  await openssl(
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-sha256",
      "-config",
      config,
      "-keyout",
      "ca-key.pem",
      "-out",
      "ca.pem",
      "-days",
      String(topology.validityDays * 10),
      "-subj",
      `/O=k8slab/CN=${topology.labName}-ca`,
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,digitalSignature,keyCertSign,cRLSign",
      "-addext",
      "subjectKeyIdentifier=hash",
    ],
    dir,
  );
  const leaves = planCertificates(topology).map((spec) => async () => {
    const sans = [...spec.sans.dns.map((d) => `DNS:${d}`), ...spec.sans.ips.map((i) => `IP:${i}`)];
    await openssl(
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-sha256",
        "-config",
        config,
        "-keyout",
        `${spec.name}-key.pem`,
        "-out",
        `${spec.name}.pem`,
        "-days",
        days,
        "-subj",
        subjectArg(spec),
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-addext",
        `keyUsage=critical,${spec.keyUsage.join(",")}`,
        "-addext",
        `extendedKeyUsage=${spec.extKeyUsage.join(",")}`,
        ...(sans.length > 0 ? ["-addext", `subjectAltName=${sans.join(",")}`] : []),
      ],
      dir,
    );
  });
  const serviceAccount = async (): Promise<void> => {
    await openssl(["genrsa", "-out", "service-account-key.pem", "2048"], dir);
    await openssl(
      ["rsa", "-in", "service-account-key.pem", "-pubout", "-out", "service-account.pem"],
      dir,
    );
  };
  await pool([...leaves, serviceAccount], parallel);
}

/** RSA-2048 generation of as many keys as the PKI has, in parallel: what all-RSA keys would cost. */
async function keygenOnly(count: number): Promise<void> {
  await Promise.all(
    Array.from({ length: count }, () => generateKeyPairAsync("rsa", { modulusLength: 2048 })),
  );
}

function parseRuns(argv: readonly string[], fallback = 5): number {
  const at = argv.indexOf("--runs");
  const value = at >= 0 ? Number(argv[at + 1]) : fallback;
  if (!Number.isInteger(value) || value < 1 || value > 50) {
    throw new Error("--runs must be a whole number from 1 to 50");
  }
  return value;
}

function row(label: string, s: Stats): string {
  const f = (ms: number): string => `${ms.toFixed(0).padStart(6)} ms`;
  return `${label.padEnd(44)} median ${f(s.median)}   min ${f(s.min)}   max ${f(s.max)}`;
}

const BENCHES = ["startup", "pki", "images", "bundle"] as const;

/** `--only startup,pki`: the benchmarks to run (default: all). */
function parseOnly(argv: readonly string[]): Set<string> {
  const at = argv.indexOf("--only");
  if (at < 0) return new Set(BENCHES);
  const names = (argv[at + 1] ?? "").split(",").filter(Boolean);
  const unknown = names.filter((n) => !(BENCHES as readonly string[]).includes(n));
  if (names.length === 0 || unknown.length > 0) {
    throw new Error(`--only takes some of ${BENCHES.join(", ")} (comma-separated)`);
  }
  return new Set(names);
}

async function benchPki(runs: number): Promise<void> {
  const topology = threeNodeTopology();
  const keys = planCertificates(topology).length + 2;
  const parallel = availableParallelism();
  const root = await mkdtemp(join(tmpdir(), "k8slab-bench-"));
  const fresh: number[] = [];
  const rerun: number[] = [];
  const cli: number[] = [];
  const floor: number[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      const lab = join(root, `lab-${i}`);
      fresh.push(await timed(() => ensurePki(lab, topology)));
      rerun.push(await timed(() => ensurePki(lab, topology)));
      const dir = await mkdtemp(join(root, `openssl-${i}-`));
      cli.push(await timed(() => opensslBaseline(topology, dir, parallel)));
      floor.push(await timed(() => keygenOnly(keys)));
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
  const cpu = cpus()[0]?.model.trim() ?? "unknown CPU";
  console.log(
    `k8slab PKI benchmark: three-node topology, ${keys} keys (CA and service account RSA-2048, ` +
      `the rest ECDSA P-256), ${runs} runs, ` +
      `${parallel} CPUs (${cpu}), Node ${process.version}`,
  );
  console.log(row("ensurePki, fresh directory", stats(fresh)));
  console.log(row("ensurePki, re-run (everything reused)", stats(rerun)));
  console.log(row(`openssl CLI baseline (${parallel} processes at once)`, stats(cli)));
  console.log(row(`RSA-2048 keygen alone for all ${keys} keys`, stats(floor)));
}

const argv = process.argv.slice(2);
const only = parseOnly(argv);
if (only.has("startup")) await benchStartup(parseRuns(argv, 10));
if (only.has("pki")) await benchPki(parseRuns(argv));

/**
 * Image pulls: pullImages of one 96 MB image (three 32 MB incompressible layers) from the test
 * registry in its network namespace into an empty cache, next to skopeo copying the same image
 * into a docker-archive. Needs root (network namespaces) and the Debian packages docker-registry
 * and skopeo; says why it is skipped otherwise.
 */
async function benchImagePulls(runs: number): Promise<void> {
  const { startTestRegistry, skopeoAuth } = await import("../test/helpers/registry.js");
  const { OciLayout } = await import("../test/helpers/registry-images.js");
  const { netnsSupport } = await import("../test/helpers/netns.js");
  const { pullImages } = await import("../src/images/index.js");
  const { randomBytes } = await import("node:crypto");
  const support = netnsSupport();
  if (!support.ok) {
    console.log(`image pull benchmark skipped: ${support.reason}`);
    return;
  }
  const root = await mkdtemp(join(tmpdir(), "k8slab-bench-images-"));
  const registry = await startTestRegistry(root);
  try {
    const layout = new OciLayout(join(root, "oci"));
    const layerMb = 32;
    const image = await layout.image({
      label: "bench",
      layers: [0, 1, 2].map((i) => ({ [`layer-${i}.bin`]: randomBytes(layerMb << 20) })),
    });
    await layout.tag("bench", image);
    const name = `${registry.host}/bench/image:v1`;
    await registry.skopeo([
      "copy",
      "--quiet",
      ...skopeoAuth(registry, "dest-"),
      `oci:${layout.dir}:bench`,
      `docker://${name}`,
    ]);
    const bytes = image.config.size + image.layers.reduce((sum, l) => sum + l.size, 0);
    const ours: number[] = [];
    const skopeo: number[] = [];
    for (let i = 0; i < runs; i++) {
      const cache = join(root, `cache-${i}`);
      const dockerConfig = join(root, "docker-config.json");
      await writeFile(dockerConfig, "{}");
      const dispatcher = registry.dispatcher();
      ours.push(await timed(() => pullImages([name], { cache, dockerConfig, dispatcher })));
      await dispatcher.close();
      await rm(cache, { recursive: true, force: true });
      const archive = join(registry.scratch, `skopeo-${i}.tar`);
      skopeo.push(
        await timed(() =>
          registry.skopeo([
            "copy",
            "--quiet",
            ...skopeoAuth(registry, "src-"),
            `docker://${name}`,
            `docker-archive:${archive}:${name}`,
          ]),
        ),
      );
      await rm(archive, { force: true });
    }
    const mbps = (ms: number): string =>
      `${(bytes / 1e6 / (ms / 1000)).toFixed(0).padStart(4)} MB/s`;
    console.log(
      `k8slab image pull benchmark: ${(bytes / 1e6).toFixed(0)} MB image (3 layers) from a local registry (TLS, bearer token) in a network namespace, ${runs} runs`,
    );
    for (const [label, samples] of [
      ["pullImages into an empty cache", ours],
      ["skopeo copy to docker-archive (baseline)", skopeo],
    ] as const) {
      const s = stats(samples);
      console.log(`${row(label, s)}   ${mbps(s.median)} at the median`);
    }
  } finally {
    await registry.destroy();
    await rm(root, { recursive: true, force: true });
  }
}

if (only.has("images")) await benchImagePulls(parseRuns(argv));

/**
 * The three-node lab's bundle: `k8slab cache pull` into an empty cache (the release archives made
 * from the real v1.9.3 and v0.10.0 programs, served on 127.0.0.1, and the test images standing in
 * for pause and a workload, from the test registry), `cache export` and its size, `cache import`
 * into another empty cache. One run each: these move hundreds of MB. The box is not included (it
 * would need a Vagrant holding it); the test box's size is shown when it is cached.
 */
async function benchBundle(): Promise<void> {
  const { startTestRegistry, skopeoAuth } = await import("../test/helpers/registry.js");
  const { pushStandInImages } = await import("../test/helpers/registry-images.js");
  const { netnsSupport } = await import("../test/helpers/netns.js");
  const { k8sFixturesMissing, prepareK8sFixtures } =
    await import("../test/helpers/k8s-fixtures.js");
  const { editedLab } = await import("../test/helpers/labs.js");
  const { cliArgv } = await import("../test/helpers/cli-process.js");
  const { testBoxPath } = await import("../test/helpers/libvirt-env.js");
  const { createServer } = await import("node:http");
  const { createReadStream, existsSync } = await import("node:fs");
  const { stat, readdir } = await import("node:fs/promises");
  const support = netnsSupport();
  const missing = k8sFixturesMissing();
  if (!support.ok || missing) {
    console.log(`bundle benchmark skipped: ${support.reason ?? missing}`);
    return;
  }
  const fixtures = await prepareK8sFixtures();
  const server = createServer((req, res) => {
    const file = join(fixtures.dir, new URL(req.url ?? "/", "http://x").pathname.slice(1));
    stat(file).then(
      (st) => {
        res.writeHead(200, { "content-length": st.size });
        createReadStream(file).pipe(res);
      },
      () => res.writeHead(404).end(),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  const root = await mkdtemp(join(tmpdir(), "k8slab-bench-bundle-"));
  const registry = await startTestRegistry(root);
  try {
    const paths = await pushStandInImages(
      registry,
      skopeoAuth(registry, "dest-"),
      join(root, "oci"),
    );
    const served = (a: (typeof fixtures.archives)["flannel"]) => ({
      url: `http://127.0.0.1:${port}/${a.file}`,
      sha256: a.sha256,
      install: a.install,
    });
    await writeFile(
      join(root, "three-node.yaml"),
      editedLab("three-node", [
        [
          ["artifacts"],
          {
            "kubernetes-server": served(fixtures.archives["kubernetes-server"]),
            flannel: served(fixtures.archives.flannel),
          },
        ],
        [["addons"], []],
        [["images", "preload"], { web: `${registry.host}/${paths.web}` }],
        [
          ["images", "mirrors"],
          { "gcr.io/google_containers": `${registry.host}/google_containers` },
        ],
      ]),
    );
    const cli = (args: string[], cache: string) =>
      timed(() =>
        execFileAsync(cliArgv()[0]!, [...cliArgv().slice(1), ...args], {
          cwd: root,
          timeout: 1_800_000,
          env: {
            ...process.env,
            K8SLAB_CACHE: join(root, cache),
            VAGRANT_HOME: join(root, "vagrant-home"),
            NODE_EXTRA_CA_CERTS: join(root, "pki", "ca.pem"),
            CI: "1",
          },
        }),
      );
    const sizeOf = async (dir: string): Promise<number> => {
      let total = 0;
      for (const f of await readdir(dir, { recursive: true })) {
        const st = await stat(join(dir, f));
        if (st.isFile()) total += st.size;
      }
      return total;
    };
    const pull = await cli(["cache", "pull", "three-node.yaml"], "cache-a");
    const artifacts = await sizeOf(join(root, "cache-a", "artifacts"));
    const images = await sizeOf(join(root, "cache-a", "images"));
    const exported = await cli(
      ["cache", "export", "three-node.yaml", "bundle.tar", "--no-box"],
      "cache-a",
    );
    const bundle = (await stat(join(root, "bundle.tar"))).size;
    const imported = await cli(["cache", "import", "bundle.tar"], "cache-b");
    const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
    const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
    console.log(
      "k8slab bundle benchmark: the three-node lab (release archives of the real v1.9.3/v0.10.0 programs from 127.0.0.1, test images from a local registry), 1 run",
    );
    console.log(
      `  cache pull into an empty cache   ${s(pull)} for ${mb(artifacts + images)} (${((artifacts + images) / 1e6 / (pull / 1000)).toFixed(0)} MB/s, process start included)`,
    );
    console.log(
      `  cache export (no box)            ${s(exported)}: bundle ${mb(bundle)} = artifacts ${mb(artifacts)} + images ${mb(images)} + lab file and manifest`,
    );
    console.log(`  cache import into an empty cache ${s(imported)} (every file verified)`);
    const box = await testBoxPath().catch(() => "");
    if (box && existsSync(box)) {
      console.log(
        `  the test box (Debian 12, libvirt) would add ${mb((await stat(box)).size)} to a bundle with --provider libvirt`,
      );
    }
  } finally {
    server.close();
    await registry.destroy();
    await rm(root, { recursive: true, force: true });
  }
}

if (only.has("bundle")) await benchBundle();
