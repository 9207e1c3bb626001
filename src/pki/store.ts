import { chmod, mkdir, readFile, readdir, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "../lab-dir/files.js";
import { readJsonFile } from "../lab-dir/json-file.js";

/** Private keys and kubeconfigs that embed one. */
export const SECRET_MODE = 0o600;
export const PUBLIC_MODE = 0o644;
export const DIR_MODE = 0o700;

export function pkiDir(labDir: string): string {
  return join(labDir, "pki");
}

export function nodesDir(labDir: string): string {
  return join(pkiDir(labDir), "nodes");
}

export function certFile(name: string): string {
  return `${name}.pem`;
}

export function keyFile(name: string): string {
  return `${name}-key.pem`;
}

export function isNotFound(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === "ENOENT";
}

export async function readTextIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (error) {
    if (isNotFound(error)) return undefined;
    throw error;
  }
}

export async function ensureDir(path: string): Promise<void> {
  await mkdir(path, { recursive: true, mode: DIR_MODE });
  await chmod(path, DIR_MODE);
}

/** Write only when the bytes differ (so unchanged files keep their bytes and mtime); fix the mode. */
export async function writeIfChanged(
  path: string,
  content: string,
  mode: number,
): Promise<boolean> {
  const current = await readTextIfExists(path);
  if (current === content) {
    const { mode: actual } = await stat(path);
    if ((actual & 0o777) !== mode) await chmod(path, mode);
    return false;
  }
  await writeFileAtomic(path, content, mode);
  return true;
}

export async function removeFile(path: string): Promise<boolean> {
  try {
    await unlink(path);
    return true;
  } catch (error) {
    if (isNotFound(error)) return false;
    throw error;
  }
}

export async function listDir(path: string): Promise<string[]> {
  try {
    return (await readdir(path)).sort();
  } catch (error) {
    if (isNotFound(error)) return [];
    throw error;
  }
}

const subjectSchema = z.object({
  commonName: z.string(),
  organizations: z.array(z.string()),
});

const certRecordSchema = z.object({
  node: z.string().optional(),
  subject: subjectSchema,
  sans: z.object({ dns: z.array(z.string()), ips: z.array(z.string()) }),
  keyUsage: z.array(z.enum(["digitalSignature", "keyEncipherment", "keyCertSign", "cRLSign"])),
  extKeyUsage: z.array(z.enum(["serverAuth", "clientAuth"])),
  serial: z.string(),
  notBefore: z.string(),
  notAfter: z.string(),
  sha256: z.string(),
});

const caRecordSchema = z.object({
  subject: subjectSchema,
  serial: z.string(),
  notBefore: z.string(),
  notAfter: z.string(),
  sha256: z.string(),
});

const manifestSchema = z.object({
  version: z.literal(1),
  ca: caRecordSchema,
  /** etcd's own CA (labs from before it have none in their manifest). */
  etcdCa: caRecordSchema.optional(),
  serviceAccount: z.object({ publicKeySha256: z.string() }).optional(),
  certs: z.record(z.string(), certRecordSchema),
});

export type CertRecord = z.infer<typeof certRecordSchema>;
export type Manifest = z.infer<typeof manifestSchema>;

export const MANIFEST_FILE = "manifest.json";

export async function readManifest(dir: string): Promise<Manifest | undefined> {
  const path = join(dir, MANIFEST_FILE);
  return readJsonFile(path, manifestSchema, {
    what: "the PKI manifest",
    fix: `remove ${path} and render the lab again: it is rebuilt from the certificates on disk (the CA and every valid key are kept)`,
  });
}

export function renderManifest(manifest: Manifest): string {
  return `${JSON.stringify(manifest, null, 2)}\n`;
}
