import { randomBytes } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, readFile, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { basename, dirname, join, relative } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { extract as tarExtract, pack as tarPack, type Pack } from "tar-stream";
import { z } from "zod";
import { artifactPath, planVerification, readPins, recordPin } from "../artifacts/cache.js";
import { K8slabError } from "../errors.js";
import type { ArchiveRecord } from "../images/index.js";
import { writeFileAtomic } from "../lab-dir/files.js";
import { loadLab, validateLabText } from "../lab/load.js";
import { formatProblem, type Problem } from "../lab/problems.js";
import {
  isVagrantProvider,
  VAGRANT_PROVIDERS,
  type VagrantProviderName,
} from "../lab/providers.js";
import type { Lab } from "../lab/schema.js";
import { boxFor, cachedImages, imageReference } from "../plan/plan.js";
import { hashingStream, type HashingStream } from "../util/hash-stream.js";
import { Vagrant } from "../vagrant/vagrant.js";
import { findInstalledBox } from "./boxes.js";

/**
 * A lab bundle (`k8slab cache export`): one uncompressed tar holding the lab file, every artifact
 * and image archive the lab needs from the cache, the Vagrant box when Vagrant has it, and last a
 * manifest listing each file with its sha256. Its contents are compressed already (archives,
 * layers, disk images); a second compression would cost minutes for nothing.
 */
const MANIFEST = "k8slab-bundle.json";
const LAB_FILE = "lab.yaml";
const SHA256 = /^[0-9a-f]{64}$/;

const fileEntry = {
  file: z.string(),
  size: z.number().int().min(0),
  sha256: z.string().regex(SHA256),
};
const manifestSchema = z.object({
  format: z.literal(1),
  lab: z.object({ name: z.string(), file: z.literal(LAB_FILE) }),
  artifacts: z.array(z.object({ name: z.string(), url: z.string(), ...fileEntry })),
  images: z.array(
    z.object({
      ref: z.string(),
      repoTag: z.string(),
      digest: z.string(),
      manifestDigest: z.string(),
      imageId: z.string(),
      ...fileEntry,
    }),
  ),
  box: z
    .object({
      name: z.string(),
      version: z.string(),
      provider: z.enum(VAGRANT_PROVIDERS),
      ...fileEntry,
    })
    .optional(),
});
type BundleManifest = z.infer<typeof manifestSchema>;

/** Where each kind of file sits in the bundle; nothing else is accepted on import. */
const ENTRY =
  /^(lab\.yaml|k8slab-bundle\.json|artifacts\/[0-9a-f]{64}\/[^/]{1,255}|images\/[0-9a-f]{64}\/[^/]{1,255}\.tar|box\/[^/]{1,255}\.box)$/;

export interface BundleProgress {
  /** What is being copied: an artifact's name, an image reference, "box <name>". */
  name: string;
  event: "start" | "progress" | "done";
  done?: number;
  total?: number;
}

export interface ExportOptions {
  lab: string;
  cwd: string;
  cache: string;
  env: NodeJS.ProcessEnv;
  file: string;
  /** Whose box to include (default: the lab's provider); false: no box. */
  box?: VagrantProviderName | false;
  onProgress?: (p: BundleProgress) => void;
  signal?: AbortSignal;
}

export interface ExportResult {
  file: string;
  size: number;
  lab: string;
  artifacts: number;
  images: number;
  box: { name: string; version: string; provider: string } | undefined;
  warnings: Problem[];
}

interface Source {
  entry: string;
  path: string;
  size: number;
  name: string;
  /** The checksum it must have (artifacts and images are checked on the way into the bundle). */
  sha256?: string;
}

/** A stage that hashes and counts what passes, reporting progress every MB. */
function meter(report: (done: number) => void): HashingStream {
  let last = 0;
  return hashingStream((done) => {
    if (done - last >= 1 << 20) {
      last = done;
      report(done);
    }
  });
}

/** Add one file to the tar, hashing it on the way; returns its sha256. */
async function addFile(pack: Pack, source: Source, options: ExportOptions): Promise<string> {
  const report = options.onProgress ?? (() => {});
  report({ name: source.name, event: "start", total: source.size });
  const m = meter((done) =>
    report({ name: source.name, event: "progress", done, total: source.size }),
  );
  const entry = pack.entry({
    name: source.entry,
    size: source.size,
    mode: 0o644,
    mtime: new Date(0),
  });
  await pipeline(createReadStream(source.path), m, entry, {
    ...(options.signal ? { signal: options.signal } : {}),
  });
  const sha256 = m.sha256();
  if (source.sha256 && sha256 !== source.sha256) {
    throw new K8slabError(
      `${source.name} is damaged in the cache: ${source.path} has sha256 ${sha256}, not ${source.sha256}`,
      { hint: `run k8slab cache pull ${options.lab} (it fetches it again), then export again` },
    );
  }
  report({ name: source.name, event: "done", done: source.size, total: source.size });
  return sha256;
}

function addText(pack: Pack, name: string, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    pack.entry({ name, mode: 0o644, mtime: new Date(0) }, text, (error) =>
      error ? reject(error) : resolve(),
    );
  });
}

/** A .box file (a tar of the unpacked box, which is what `vagrant box add` unpacks again). */
async function packBox(dir: string, out: string, signal?: AbortSignal): Promise<void> {
  const files: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      if (e.isDirectory()) await walk(join(d, e.name));
      else if (e.isFile()) files.push(join(d, e.name));
    }
  };
  await walk(dir);
  const pack = tarPack();
  const written = pipeline(pack, createWriteStream(out), signal ? { signal } : {});
  try {
    for (const path of files.sort()) {
      const size = (await stat(path)).size;
      const entry = pack.entry({
        name: relative(dir, path),
        size,
        mode: 0o644,
        mtime: new Date(0),
      });
      await pipeline(createReadStream(path), entry, signal ? { signal } : {});
    }
    pack.finalize();
    await written;
  } catch (error) {
    pack.destroy(error as Error);
    await written.catch(() => undefined);
    throw error;
  }
}

/**
 * `k8slab cache export`: everything the lab needs, from the cache, into one file. Nothing is
 * downloaded: what the cache lacks is named with the command that fetches it. The bundle is
 * written under another name and renamed when complete, so an interrupted export leaves nothing.
 */
export async function exportBundle(options: ExportOptions): Promise<ExportResult> {
  const { lab, path: labPath, warnings } = await loadLab(options.lab, { cwd: options.cwd });
  const sources: Source[] = [];
  // One file per entry: two URLs of the same file, or a tag and its digest, are one file in the
  // bundle that the manifest lists twice.
  const addSource = (source: Source): void => {
    if (!sources.some((s) => s.entry === source.entry)) sources.push(source);
  };
  const missing: string[] = [];
  const manifest: BundleManifest = {
    format: 1,
    lab: { name: lab.name, file: LAB_FILE },
    artifacts: [],
    images: [],
  };

  for (const { name, artifact, verification } of await planVerification(lab, options.cache)) {
    const sha256 = verification.by === "first-download" ? undefined : verification.sha256;
    const path = sha256 ? artifactPath(options.cache, sha256, artifact.url) : undefined;
    const size = path
      ? await stat(path).then(
          (s) => s.size,
          () => undefined,
        )
      : undefined;
    if (!sha256 || !path || size === undefined) {
      missing.push(`artifact ${name}`);
      continue;
    }
    const entry = `artifacts/${sha256}/${basename(path)}`;
    addSource({ entry, path, size, name, sha256 });
    manifest.artifacts.push({ name, url: artifact.url, file: entry, size, sha256 });
  }

  const refs = [...new Set(cachedImages(lab).map(imageReference))];
  if (refs.length > 0) {
    const { findCachedImage } = await import("../images/index.js");
    for (const ref of refs) {
      const found = await findCachedImage(options.cache, ref);
      if (!found) {
        missing.push(`image ${ref}`);
        continue;
      }
      const { record, path } = found;
      const entry = `images/${record.digest.slice("sha256:".length)}/${basename(path)}`;
      addSource({ entry, path, size: record.size, name: ref, sha256: record.sha256 });
      manifest.images.push({ ref, ...record, file: entry });
    }
  }
  if (missing.length > 0) {
    throw new K8slabError(`the cache lacks what lab ${lab.name} needs: ${missing.join(", ")}`, {
      hint: `download it first: k8slab cache pull ${options.lab} (then export again)`,
    });
  }

  // The box of the lab's provider unless told otherwise; machines reached over SSH have none.
  const provider =
    options.box !== undefined
      ? options.box
      : isVagrantProvider(lab.provider.name)
        ? lab.provider.name
        : false;
  const boxSpec = provider ? boxFor(lab, provider) : undefined;
  const box =
    boxSpec && provider ? await findInstalledBox(options.env, boxSpec, provider) : undefined;
  if (provider && boxSpec && !box) {
    warnings.push({
      severity: "warning",
      path: "box",
      message: `Vagrant has no box ${boxSpec.name} for ${provider}, so the bundle holds none: creating the lab will download it`,
      hint: `to include it, add it first (vagrant box add ${boxSpec.name} --provider ${provider}) and export again`,
    });
  }

  const file = options.file;
  const partial = join(
    dirname(file),
    `.${basename(file)}.${randomBytes(4).toString("hex")}.partial`,
  );
  const boxFile = `${partial}.box`;
  await mkdir(dirname(file), { recursive: true });
  const pack = tarPack();
  const written = pipeline(pack, createWriteStream(partial, { flags: "wx" }), {
    ...(options.signal ? { signal: options.signal } : {}),
  });
  try {
    await addText(pack, LAB_FILE, await readFile(labPath, "utf8"));
    for (const source of sources) await addFile(pack, source, options);
    if (box) {
      await packBox(box.dir, boxFile, options.signal);
      const size = (await stat(boxFile)).size;
      const entry = `box/${box.name.replace(/\//g, "_")}-${box.provider}.box`;
      const name = `box ${box.name} ${box.version} (${box.provider})`;
      const sha256 = await addFile(pack, { entry, path: boxFile, size, name }, options);
      manifest.box = {
        name: box.name,
        version: box.version,
        provider: box.provider as VagrantProviderName,
        file: entry,
        size,
        sha256,
      };
    }
    await addText(pack, MANIFEST, `${JSON.stringify(manifest, null, 2)}\n`);
    pack.finalize();
    await written;
    await rename(partial, file);
  } catch (error) {
    pack.destroy(error as Error);
    await written.catch(() => undefined);
    await rm(partial, { force: true });
    throw options.signal?.aborted ? options.signal.reason : error;
  } finally {
    await rm(boxFile, { force: true });
  }
  return {
    file,
    size: (await stat(file)).size,
    lab: lab.name,
    artifacts: manifest.artifacts.length,
    images: manifest.images.length,
    box: manifest.box && {
      name: manifest.box.name,
      version: manifest.box.version,
      provider: manifest.box.provider,
    },
    warnings,
  };
}

export interface ImportOptions {
  file: string;
  cache: string;
  env: NodeJS.ProcessEnv;
  onProgress?: (p: BundleProgress) => void;
  /** Each line Vagrant prints while adding the box. */
  onLine?: (line: string) => void;
  signal?: AbortSignal;
}

export interface ImportResult {
  cache: string;
  lab: string;
  /** Where the bundle's lab file was written: create the lab from it. */
  labFile: string;
  artifacts: number;
  images: number;
  box: "added" | "present" | "none";
}

interface Extracted {
  path: string;
  size: number;
  sha256: string;
}

function notABundle(file: string, why: string): K8slabError {
  return new K8slabError(`${file} is not a k8slab bundle: ${why}`, {
    hint: "make one with: k8slab cache export <lab> FILE",
  });
}

/** Read the whole tar into `dir`, every file hashed on the way; entries are only of known shapes. */
async function extractBundle(options: ImportOptions, dir: string): Promise<Map<string, Extracted>> {
  const total = (await stat(options.file)).size;
  const report = options.onProgress ?? (() => {});
  const files = new Map<string, Extracted>();
  const name = basename(options.file);
  let read = 0;
  const input: Readable = createReadStream(options.file);
  input.on("data", (chunk: Buffer) => {
    read += chunk.length;
  });
  const extract = tarExtract();
  const consumed = pipeline(input, extract, options.signal ? { signal: options.signal } : {});
  report({ name, event: "start", total });
  try {
    for await (const entry of extract) {
      const header = entry.header;
      if (header.type !== "file" || !ENTRY.test(header.name) || files.has(header.name)) {
        entry.resume();
        throw notABundle(options.file, `it holds ${JSON.stringify(header.name)}`);
      }
      const path = join(dir, header.name);
      await mkdir(dirname(path), { recursive: true });
      const m = meter(() => report({ name, event: "progress", done: read, total }));
      await pipeline(entry, m, createWriteStream(path, { flags: "wx" }));
      files.set(header.name, { path, size: header.size ?? 0, sha256: m.sha256() });
    }
    await consumed;
  } catch (error) {
    input.destroy();
    await consumed.catch(() => undefined);
    if (error instanceof K8slabError || options.signal?.aborted) throw error;
    throw notABundle(
      options.file,
      `it cannot be read as a tar (${(error as Error).message}); was it copied completely?`,
    );
  }
  report({ name, event: "done", done: total, total });
  return files;
}

/** The bundle's manifest, and every file it lists present with its size and sha256. */
async function checkBundle(
  file: string,
  files: Map<string, Extracted>,
): Promise<{ manifest: BundleManifest; lab: Lab }> {
  const manifestFile = files.get(MANIFEST);
  if (!manifestFile) throw notABundle(file, `it has no ${MANIFEST} (an interrupted copy?)`);
  let manifest: BundleManifest;
  try {
    manifest = manifestSchema.parse(JSON.parse(await readFile(manifestFile.path, "utf8")));
  } catch (error) {
    throw notABundle(
      file,
      `its ${MANIFEST} is unreadable (${(error as Error).message.split("\n")[0]})`,
    );
  }
  const listed = [
    ...manifest.artifacts,
    ...manifest.images,
    ...(manifest.box ? [manifest.box] : []),
  ];
  for (const entry of listed) {
    const got = files.get(entry.file);
    if (!got) throw notABundle(file, `${entry.file} is missing`);
    if (got.size !== entry.size || got.sha256 !== entry.sha256) {
      throw new K8slabError(
        `${file} is damaged: ${entry.file} has sha256 ${got.sha256}, the bundle lists ${entry.sha256}`,
        { hint: "copy the bundle again (or export it again from a cache that has the lab)" },
      );
    }
  }
  const labFile = files.get(LAB_FILE);
  if (!labFile) throw notABundle(file, `it has no ${LAB_FILE}`);
  const { lab, problems } = validateLabText(
    `${file}:${LAB_FILE}`,
    await readFile(labFile.path, "utf8"),
  );
  if (!lab) {
    throw new K8slabError(`the lab file in ${file} is not valid for this k8slab`, {
      hint: problems.map(formatProblem).join("\n"),
    });
  }
  return { manifest, lab };
}

/**
 * `k8slab cache import`: verify a bundle completely, then move its files into the cache, record
 * what the lab's unpinned artifacts and images resolved to, keep its lab file, and add its box to
 * Vagrant. The bundle is checked before anything in the cache changes; every file goes in by
 * rename, so an interruption leaves only complete, verified files.
 */
export async function importBundle(options: ImportOptions): Promise<ImportResult> {
  const { cache } = options;
  await mkdir(cache, { recursive: true });
  const work = join(cache, `.import-${randomBytes(4).toString("hex")}`);
  await mkdir(work);
  try {
    const files = await extractBundle(options, work);
    const { manifest, lab } = await checkBundle(options.file, files);
    const at = (file: string) => files.get(file)!.path;

    // Recorded checksums and digests that disagree with the bundle: refuse before changing anything.
    const { parseImageRef, readImagePins, storeImageArchive } = await import("../images/index.js");
    const pins = await readPins(cache);
    const imagePins = await readImagePins(cache);
    const conflicts = [
      ...manifest.artifacts
        .filter((a) => pins[a.url] && pins[a.url] !== a.sha256)
        .map((a) => `${a.url} (recorded ${pins[a.url]}, bundle ${a.sha256})`),
      ...manifest.images
        .filter(
          (i) =>
            !parseImageRef(i.ref).digest &&
            imagePins[i.repoTag] &&
            imagePins[i.repoTag] !== i.digest,
        )
        .map((i) => `${i.repoTag} (recorded ${imagePins[i.repoTag]}, bundle ${i.digest})`),
    ];
    if (conflicts.length > 0) {
      throw new K8slabError(`the cache recorded other content for: ${conflicts.join("; ")}`, {
        hint: `the bundle was made from other downloads than this cache's; to take the bundle's, remove those entries from ${join(cache, "pins.json")} or ${join(cache, "image-pins.json")} and import again`,
      });
    }

    // A file the manifest lists twice (two uses of one file) is moved once.
    const moved = new Set<string>();
    const take = (file: string): string | undefined => {
      if (moved.has(file)) return undefined;
      moved.add(file);
      return at(file);
    };
    for (const a of manifest.artifacts) {
      const target = artifactPath(cache, a.sha256, a.url);
      const from = take(a.file);
      await mkdir(dirname(target), { recursive: true });
      if (from) await rename(from, target);
      const declared = lab.artifacts[a.name]?.sha256;
      if (declared !== a.sha256) await recordPin(cache, a.url, a.sha256);
    }
    for (const i of manifest.images) {
      const record: ArchiveRecord = {
        repoTag: i.repoTag,
        digest: i.digest,
        manifestDigest: i.manifestDigest,
        imageId: i.imageId,
        size: i.size,
        sha256: i.sha256,
      };
      await storeImageArchive(cache, i.ref, record, take(i.file));
    }
    const labsDir = join(cache, "labs");
    await mkdir(labsDir, { recursive: true });
    const labFile = join(labsDir, `${lab.name}.yaml`);
    await writeFileAtomic(labFile, await readFile(at(LAB_FILE), "utf8"), 0o644);

    let box: ImportResult["box"] = "none";
    if (manifest.box) {
      const { name, version, provider, sha256 } = manifest.box;
      if (await findInstalledBox(options.env, { name, version }, provider)) {
        box = "present";
      } else {
        const catalog = join(work, "box-catalog.json");
        const url = `file://${at(manifest.box.file)}`;
        await writeFile(
          catalog,
          JSON.stringify({
            name,
            versions: [
              {
                version,
                providers: [{ name: provider, url, checksum_type: "sha256", checksum: sha256 }],
              },
            ],
          }),
        );
        const vagrant = new Vagrant({
          cwd: work,
          logDir: join(work, "logs"),
          env: options.env,
          ...(options.signal ? { signal: options.signal } : {}),
          ...(options.onLine ? { onLine: options.onLine } : {}),
        });
        await vagrant.boxAdd(catalog);
        box = "added";
      }
    }
    return {
      cache,
      lab: lab.name,
      labFile,
      artifacts: manifest.artifacts.length,
      images: manifest.images.length,
      box,
    };
  } catch (error) {
    throw options.signal?.aborted ? options.signal.reason : error;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
