import { describe, expect, it } from "vitest";
import { mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { cli } from "./helpers/cli.js";
import { useRenderedLab } from "./helpers/rendered-lab.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();
const labCwd = useRenderedLab("single-node", tmp);

/** A working directory with a rendered single-node lab in ./lab and a kubeconfig path. */
async function setup(): Promise<{ cwd: string; target: string; env: NodeJS.ProcessEnv }> {
  const cwd = await labCwd();
  const target = join(cwd, "kube", "config");
  return { cwd, target, env: { ...process.env, KUBECONFIG: target } };
}

interface View {
  "current-context"?: string;
  clusters?: { name: string; cluster: Record<string, unknown> }[];
  users?: { name: string; user: Record<string, unknown> }[];
  contexts?: { name: string; context: { cluster: string; user: string } }[];
  [key: string]: unknown;
}

/** The file as kubectl reads it (the reader that matters). */
async function kubectlView(file: string): Promise<View> {
  const run = await execa(
    "kubectl",
    ["config", "view", "--raw", "-o", "json", "--kubeconfig", file],
    {
      timeout: 60_000,
    },
  );
  return JSON.parse(run.stdout) as View;
}

const WORK = `# my work cluster: do not touch
apiVersion: v1
kind: Config
clusters:
- name: work
  cluster:
    server: https://127.0.0.1:6443
    insecure-skip-tls-verify: true
contexts:
- name: work
  context:
    cluster: work
    user: admin
    namespace: team-a
users:
- name: admin
  user:
    token: "0123abc"
current-context: work
`;

const NAME = "k8slab-single-node";

describe("kubeconfig --merge", () => {
  it("adds k8slab-<lab> entries and leaves a `work` context whose user is named admin as it was", async () => {
    const { cwd, target, env } = await setup();
    await mkdir(join(cwd, "kube"));
    await writeFile(target, WORK);
    const before = await kubectlView(target);

    const run = await cli(["kubeconfig", "--dir", "lab", "--merge"], { cwd, env });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toContain(`added context ${NAME}`);
    expect(run.stderr).toContain(`kubectl --context ${NAME} get nodes`);
    // The lab was never created: merging it says so.
    expect(run.stderr).toMatch(/warning: lab single-node has no verified stage/);

    const after = await kubectlView(target);
    const others = <T extends { name: string }>(list: T[] | undefined) =>
      (list ?? []).filter((x) => x.name !== NAME);
    expect(others(after.clusters)).toEqual(before.clusters);
    expect(others(after.users)).toEqual(before.users);
    expect(others(after.contexts)).toEqual(before.contexts);
    expect(after["current-context"]).toBe("work");
    expect(after.users!.find((u) => u.name === "admin")!.user).toEqual({ token: "0123abc" });
    // The lab's entries, named after it; the context uses only them.
    expect(after.contexts!.find((c) => c.name === NAME)!.context).toMatchObject({
      cluster: NAME,
      user: NAME,
    });
    expect(after.clusters!.find((c) => c.name === NAME)!.cluster.server).toBe(
      "https://192.168.56.160:6443",
    );
    expect(after.users!.find((u) => u.name === NAME)!.user).toHaveProperty(
      "client-certificate-data",
    );
    // The file keeps its comment; the backup is the file as it was.
    const text = await readFile(target, "utf8");
    expect(text).toContain("# my work cluster: do not touch");
    const backups = (await readdir(join(cwd, "kube"))).filter((f) => f.includes("k8slab-backup"));
    expect(backups).toHaveLength(1);
    expect(await readFile(join(cwd, "kube", backups[0]!), "utf8")).toBe(WORK);
  });

  it("refuses to replace a k8slab-<lab> entry that k8slab did not write, and changes nothing", async () => {
    const { cwd, target, env } = await setup();
    await mkdir(join(cwd, "kube"));
    const mine = WORK.replace(
      "- name: work\n  cluster:",
      `- name: ${NAME}\n  cluster:\n    server: https://10.9.8.7:6443\n- name: work\n  cluster:`,
    );
    await writeFile(target, mine);
    const run = await cli(["kubeconfig", "--dir", "lab", "--merge"], { cwd, env });
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(
      new RegExp(`error: .*already has a cluster ${NAME} that k8slab did not write`),
    );
    expect(run.stderr).toMatch(/hint: rename or remove it/);
    expect(await readFile(target, "utf8")).toBe(mine);
    expect((await readdir(join(cwd, "kube"))).sort()).toEqual(["config"]);
  });

  it("merging again replaces its own entries, also after kubectl rewrote the file", async () => {
    const { cwd, target, env } = await setup();
    // A lab with a verified stage: no warning.
    await writeFile(
      join(cwd, "lab", "state.json"),
      JSON.stringify({
        version: 2,
        lab: "single-node",
        phases: {},
        stages: { etcd: { verifiedAt: new Date().toISOString(), detail: "ok", passes: 1 } },
      }),
    );
    const first = await cli(["kubeconfig", "--dir", "lab", "--merge"], { cwd, env });
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).not.toMatch(/warning/);
    expect((await kubectlView(target))["current-context"]).toBe(NAME);
    // kubectl rewrites the file (and with it k8slab's marks) when it changes anything.
    await execa("kubectl", ["config", "set-context", NAME, "--namespace", "kube-system"], {
      env,
      timeout: 60_000,
    });
    const second = await cli(["kubeconfig", "--dir", "lab", "--merge"], { cwd, env });
    expect(second.code, second.stderr).toBe(0);
    const view = await kubectlView(target);
    for (const kind of ["clusters", "users", "contexts"] as const) {
      expect(view[kind]!.map((x) => x.name)).toEqual([NAME]);
    }
  });
});
