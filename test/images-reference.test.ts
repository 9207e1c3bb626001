/** Image names, registry mirrors and Docker config credentials, without a registry. */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { K8slabError } from "../src/errors.js";
import { credentialsFor, readDockerConfig } from "../src/images/docker-config.js";
import { mirroredRepository, parseImageRef } from "../src/images/reference.js";
import { useTmpDirs } from "./helpers/tmp.js";

const DIGEST = `sha256:${"ab".repeat(32)}`;

describe("image references", () => {
  it("reads names the way Docker does, keeping the written name for the archive", () => {
    expect(parseImageRef("busybox")).toMatchObject({
      registry: "docker.io",
      path: "library/busybox",
      tag: "latest",
      digest: undefined,
      repoTag: "busybox:latest",
    });
    expect(parseImageRef("gcr.io/google_containers/pause-amd64:3.1")).toMatchObject({
      registry: "gcr.io",
      path: "google_containers/pause-amd64",
      tag: "3.1",
      repoTag: "gcr.io/google_containers/pause-amd64:3.1",
    });
    expect(parseImageRef(`localhost:5000/team/app:v2@${DIGEST}`)).toMatchObject({
      registry: "localhost:5000",
      path: "team/app",
      tag: "v2",
      digest: DIGEST,
      repoTag: "localhost:5000/team/app:v2",
    });
    expect(parseImageRef("localhost:5000/app").repoTag).toBe("localhost:5000/app:latest");
  });

  it("refuses what docker load could not name, and malformed references", () => {
    const refused = (ref: string) => {
      try {
        parseImageRef(ref);
      } catch (error) {
        expect(error).toBeInstanceOf(K8slabError);
        return error as K8slabError;
      }
      throw new Error(`${ref} was accepted`);
    };
    expect(refused(`busybox@${DIGEST}`).hint).toContain(`name:tag@${DIGEST}`);
    expect(refused("Busybox:1").message).toMatch(/not a valid image reference/);
    expect(refused(`busybox:1@sha512:${"ab".repeat(64)}`).message).toMatch(/only sha256/);
  });
});

describe("registry mirrors", () => {
  const mirrors = {
    "gcr.io/google_containers": "registry.k8s.io",
    "k8s.gcr.io/": "mirror.example:5000/k8s/",
    "docker.io": "hub-mirror.example",
    "gcr.io/google_containers/special": "other.example/special",
  };
  const from = (ref: string) => mirroredRepository(parseImageRef(ref), mirrors);

  it("replaces the longest matching registry or registry/path", () => {
    expect(from("gcr.io/google_containers/pause-amd64:3.1")).toEqual({
      registry: "registry.k8s.io",
      path: "pause-amd64",
    });
    expect(from("gcr.io/google_containers/special/x:1")).toEqual({
      registry: "other.example",
      path: "special/x",
    });
    expect(from("k8s.gcr.io/kubernetes-dashboard-amd64:v1.8.0")).toEqual({
      registry: "mirror.example:5000",
      path: "k8s/kubernetes-dashboard-amd64",
    });
    expect(from("busybox")).toEqual({ registry: "hub-mirror.example", path: "library/busybox" });
  });

  it("matches whole path components only, and leaves other registries alone", () => {
    expect(from("gcr.io/google_containers_x/pause:1")).toEqual({
      registry: "gcr.io",
      path: "google_containers_x/pause",
    });
    expect(from("quay.io/coreos/flannel:v0.10.0")).toEqual({
      registry: "quay.io",
      path: "coreos/flannel",
    });
  });

  it("refuses a mirror location that gives no repository name", () => {
    expect(() =>
      mirroredRepository(parseImageRef("k8s.gcr.io/pause:3.1"), { "k8s.gcr.io": "Bad Host" }),
    ).toThrow(/not a repository name/);
  });
});

describe("Docker config credentials", () => {
  const tmp = useTmpDirs();

  async function config(json: unknown): Promise<string> {
    const file = join(await tmp(), "config.json");
    await writeFile(file, typeof json === "string" ? json : JSON.stringify(json));
    return file;
  }

  it("reads auths in every form docker login writes", async () => {
    const auth = (s: string) => Buffer.from(s).toString("base64");
    const docker = await readDockerConfig(
      await config({
        auths: {
          "https://index.docker.io/v1/": { auth: auth("hubuser:hub:pass") },
          "registry.example:5000": { auth: auth("alice:secret") },
          "https://other.example": { username: "bob", password: "pw" },
          "helper.example": {},
        },
        credsStore: "pass",
      }),
    );
    expect(credentialsFor(docker, "docker.io")).toEqual({
      username: "hubuser",
      password: "hub:pass",
    });
    expect(credentialsFor(docker, "registry.example:5000")).toEqual({
      username: "alice",
      password: "secret",
    });
    expect(credentialsFor(docker, "other.example")).toEqual({ username: "bob", password: "pw" });
    expect(credentialsFor(docker, "helper.example")).toBeUndefined();
    expect(credentialsFor(docker, "registry.example")).toBeUndefined();
    expect(docker.helpers).toEqual(["pass"]);
  });

  it("treats a missing file as no credentials and a broken one as an error", async () => {
    const dir = await tmp();
    expect((await readDockerConfig(join(dir, "absent.json"))).auths.size).toBe(0);
    await expect(readDockerConfig(await config("{not json"))).rejects.toThrow(/not valid JSON/);
    await expect(
      readDockerConfig(await config({ auths: { "r.example": { auth: "bm9jb2xvbg==" } } })),
    ).rejects.toThrow(/holds no user:password/);
  });
});
