import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { parseDocument } from "yaml";
import { piToLab } from "../src/hypriot/pi-to-lab.js";
import { builtinPiLabsDir, validatePiLabText, type PiLab } from "../src/hypriot/pi-lab.js";
import { loadLab } from "../src/lab/load.js";
import { renderLabDir } from "../src/render/index.js";
import { cli } from "./helpers/cli.js";
import { useTmpDirs } from "./helpers/tmp.js";

/** Seed 002's Pi cluster as a lab `create` accepts: boards over SSH, arm artifacts, same phases. */

const tmp = useTmpDirs();
const builtinText = () => readFileSync(join(builtinPiLabsDir(), "pi-cluster.yaml"), "utf8");

function piLab(edits: [path: (string | number)[], value: unknown][] = []): PiLab {
  const doc = parseDocument(builtinText());
  for (const [path, value] of edits) {
    if (value === undefined) doc.deleteIn(path);
    else doc.setIn(path, doc.createNode(value));
  }
  const { lab, problems } = validatePiLabText("pi.yaml", doc.toString());
  expect(problems.filter((p) => p.severity === "error")).toEqual([]);
  return lab!;
}

describe("a Pi lab as a lab of provider ssh", () => {
  it("the built-in pi-cluster converts: boards, roles, login, architecture, network, artifacts", async () => {
    const { lab, file, warnings } = await loadLab("pi-cluster", { cwd: await tmp() });
    expect(file).toBe("pi-cluster.yaml");
    expect(lab.name).toBe("cluster-1");
    expect(lab.provider.name).toBe("ssh");
    expect(lab.ssh).toMatchObject({ user: "pirate", port: 22 });
    expect(lab.network.hostOnly).toBe("192.168.0.0/24");
    expect(lab.nodes.map((n) => [n.name, n.ip, n.arch, n.roles])).toEqual([
      ["bee42-crew-01-001", "192.168.0.11", "arm", ["etcd", "control-plane"]],
      ["bee42-crew-01-002", "192.168.0.12", "arm", ["etcd", "worker"]],
      ["bee42-crew-01-003", "192.168.0.13", "arm", ["etcd", "worker"]],
    ]);
    expect(lab.artifacts["kubernetes-server"]?.urls?.arm?.url).toBe(
      "https://dl.k8s.io/v1.9.3/kubernetes-server-linux-arm.tar.gz",
    );
    expect(lab.artifacts.flannel?.urls?.arm?.url).toMatch(/flannel-v0\.10\.0-linux-arm\.tar\.gz$/);
    // No sha256 is made up: the first download's is recorded.
    expect(JSON.stringify(lab.artifacts)).not.toContain("sha256");
    // etcd has no 32-bit ARM build upstream, and Docker comes from the image: said, not hidden.
    expect(lab.artifacts.etcd).toBeUndefined();
    expect(lab.artifacts.docker).toBeUndefined();
    expect(warnings.map((w) => w.message)).toContain(
      "etcd publishes no arm build: the boards' own etcd and etcdctl are used (install them on the boards)",
    );
  });

  it("64-bit boards get the arm64 archives, etcd included", () => {
    const { lab, problems } = piToLab(piLab([[["kubernetes", "arch"], "arm64"]]));
    expect(problems).toEqual([]);
    expect(lab!.nodes.every((n) => n.arch === "arm64")).toBe(true);
    expect(lab!.artifacts!.etcd).toEqual({
      urls: {
        arm64: {
          url: "https://github.com/coreos/etcd/releases/download/v3.2.18/etcd-v3.2.18-linux-arm64.tar.gz",
        },
      },
      roles: ["etcd"],
      install: {
        "etcd-v3.2.18-linux-arm64/etcd": "etcd",
        "etcd-v3.2.18-linux-arm64/etcdctl": "etcdctl",
      },
    });
  });

  it("without a kubernetes section the upstream release locations are the defaults", () => {
    const { lab } = piToLab(piLab([[["kubernetes"], undefined]]));
    expect(lab!.artifacts!["kubernetes-server"]!.urls).toEqual({
      arm: { url: "https://dl.k8s.io/v1.9.3/kubernetes-server-linux-arm.tar.gz" },
    });
    expect(lab!.artifacts!.flannel!.urls).toEqual({
      arm: {
        url: "https://github.com/coreos/flannel/releases/download/v0.10.0/flannel-v0.10.0-linux-arm.tar.gz",
      },
    });
  });

  it("a board without a static address, or Docker without an archive for the boards, is refused by name", () => {
    const dhcp = piToLab(piLab([[["nodes", 1, "ip"], undefined]]));
    expect(dhcp.lab).toBeUndefined();
    expect(dhcp.problems.map((p) => [p.path, p.message])).toEqual([
      [
        "nodes.1.ip",
        "bee42-crew-01-003 has no static ip: k8slab's certificates and etcd need each board's address",
      ],
    ]);
    const docker = piToLab(
      piLab([[["kubernetes", "docker"], { arm64: { url: "https://example.invalid/d.tgz" } }]]),
    );
    expect(docker.problems.map((p) => p.path)).toContain("kubernetes.docker");
    expect(docker.lab).toBeUndefined();
  });

  it("a lone master is schedulable; etcd runs on three boards at most (an odd number)", () => {
    const alone = piToLab(piLab([[["nodes"], []]])).lab!;
    expect(alone.nodes.map((n) => n.roles)).toEqual([["etcd", "control-plane", "worker"]]);
    expect(alone.cluster.schedulableMaster).toBe(true);
    const five = piToLab(
      piLab([
        [["nodes"], [12, 13, 14, 15].map((h) => ({ hostname: `pi-${h}`, ip: `192.168.0.${h}` }))],
      ]),
    ).lab!;
    expect(five.nodes.filter((n) => n.roles.includes("etcd")).map((n) => n.name)).toEqual([
      "bee42-crew-01-001",
      "pi-12",
      "pi-13",
    ]);
  });
});

describe("rendering a Pi lab", () => {
  it("renders the same phases per board, fetching the arm archives, and every script passes shellcheck", async () => {
    const cwd = await tmp();
    const { dir, plan, files } = await renderLabDir({ lab: "pi-cluster", cwd });
    expect(plan.nodes.map((n) => n.phases)).toEqual([
      [
        "base",
        "pki",
        "artifacts",
        "etcd",
        "flannel-config",
        "flannel",
        "docker",
        "kubelet",
        "control-plane",
        "kube-proxy",
      ],
      ["base", "pki", "artifacts", "etcd", "flannel", "docker", "kubelet", "kube-proxy"],
      ["base", "pki", "artifacts", "etcd", "flannel", "docker", "kubelet", "kube-proxy"],
    ]);
    for (const node of plan.nodes) {
      const script = await readFile(join(dir, "provision", node.name, "artifacts.sh"), "utf8");
      expect(script).toMatch(/^fetch kubernetes-server '' kubernetes-server-arm$/m);
      expect(script).toMatch(/^fetch flannel '' flannel-arm$/m);
      expect(script).not.toContain("amd64");
    }
    const lab = JSON.parse(await readFile(join(dir, "lab.json"), "utf8")) as { source: string };
    expect(lab.source).toBe("pi-cluster.yaml");
    const scripts = files.filter((f) => f.endsWith(".sh")).map((f) => join(dir, f));
    // 8 to 10 phases per board, and each board's reset.sh.
    expect(scripts.length).toBe(26 + 3);
    const sc = await execa("shellcheck", ["-S", "warning", ...scripts], {
      reject: false,
      all: true,
    });
    expect(sc.all).toBe("");
    expect(sc.exitCode).toBe(0);
  });

  it("k8slab validate still checks the Pi lab as a Pi lab, and flash-config reads it as before", async () => {
    const cwd = await tmp();
    const validate = await cli(["validate", join(builtinPiLabsDir(), "pi-cluster.yaml")], { cwd });
    expect(validate.code, validate.stderr).toBe(0);
    const flash = await cli(["flash-config", "pi-cluster", "--out", join(cwd, "flash")], { cwd });
    expect(flash.code, flash.stderr).toBe(0);
  });
});
