import { z } from "zod";

export const MEDIA = {
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
} as const;

const SCHEMA1 = [
  "application/vnd.docker.distribution.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/** What k8slab asks registries for: image manifests and lists, never schema 1. */
export const ACCEPT_MANIFESTS = Object.values(MEDIA).join(", ");

/** The platform every lab runs: the VMs are x86-64 Linux. */
export const PLATFORM = { os: "linux", architecture: "amd64" } as const;

export const DIGEST = /^sha256:[a-f0-9]{64}$/;

const descriptor = z.object({
  mediaType: z.string(),
  digest: z.string().regex(DIGEST, "must be a sha256 digest"),
  size: z
    .number()
    .int()
    .min(0)
    .max(2 ** 40),
});
export type Descriptor = z.infer<typeof descriptor>;

const imageManifest = z.object({
  schemaVersion: z.literal(2),
  config: descriptor,
  layers: z.array(descriptor),
});
export type ImageManifest = z.infer<typeof imageManifest>;

const imageIndex = z.object({
  schemaVersion: z.literal(2),
  manifests: z.array(
    descriptor.extend({
      platform: z
        .object({ os: z.string(), architecture: z.string(), variant: z.string().optional() })
        .optional(),
    }),
  ),
});
export type ImageIndex = z.infer<typeof imageIndex>;

/** The part of an image configuration `docker load` checks against the layers. */
export const imageConfig = z.object({
  os: z.string().optional(),
  architecture: z.string().optional(),
  rootfs: z.object({ diff_ids: z.array(z.string().regex(DIGEST)) }),
});

export type ParsedManifest =
  | { kind: "index"; mediaType: string; index: ImageIndex }
  | { kind: "image"; mediaType: string; manifest: ImageManifest }
  | { kind: "schema1"; mediaType: string }
  | { kind: "unknown"; mediaType: string; problem: string };

/**
 * Classify a manifest by the Content-Type the registry sent, else by its own mediaType, else by
 * its shape (OCI allows leaving mediaType out).
 */
export function parseManifest(body: Buffer, contentType: string | undefined): ParsedManifest {
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(body.toString("utf8")) as Record<string, unknown>;
  } catch {
    return { kind: "unknown", mediaType: contentType ?? "", problem: "it is not JSON" };
  }
  const declared = typeof json.mediaType === "string" ? json.mediaType : undefined;
  const type = contentType?.split(";")[0]?.trim();
  const mediaType = (type && type !== "application/json" ? type : undefined) ?? declared ?? "";
  if (json.schemaVersion === 1 || SCHEMA1.includes(mediaType))
    return { kind: "schema1", mediaType };
  const isIndex =
    mediaType === MEDIA.dockerList ||
    mediaType === MEDIA.ociIndex ||
    (mediaType === "" && "manifests" in json);
  const isImage =
    mediaType === MEDIA.dockerManifest ||
    mediaType === MEDIA.ociManifest ||
    (mediaType === "" && "config" in json);
  const schema = isIndex ? imageIndex : isImage ? imageManifest : undefined;
  if (schema === undefined) {
    return { kind: "unknown", mediaType, problem: `media type ${mediaType || "(none)"}` };
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return {
      kind: "unknown",
      mediaType,
      problem: `${issue?.path.join(".") || "manifest"}: ${issue?.message ?? "malformed"}`,
    };
  }
  return isIndex
    ? { kind: "index", mediaType, index: parsed.data as ImageIndex }
    : { kind: "image", mediaType, manifest: parsed.data as ImageManifest };
}

/** The linux/amd64 entry of a manifest list or OCI index. */
export function platformEntry(index: ImageIndex): Descriptor | undefined {
  return index.manifests.find(
    (m) =>
      m.platform?.os === PLATFORM.os &&
      m.platform.architecture === PLATFORM.architecture &&
      (m.mediaType === MEDIA.dockerManifest || m.mediaType === MEDIA.ociManifest),
  );
}

export function platformsOf(index: ImageIndex): string[] {
  return index.manifests.map((m) =>
    m.platform
      ? [m.platform.os, m.platform.architecture, m.platform.variant].filter(Boolean).join("/")
      : "(no platform)",
  );
}
