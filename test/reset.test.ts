import { describe, expect, it } from "vitest";
import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { renderLabDir } from "../src/render/index.js";
import { cli } from "./helpers/cli.js";
import { createFakeBin } from "./helpers/fake-bin.js";
import { isRoot } from "./helpers/host.js";
import { useRenderedLab } from "./helpers/rendered-lab.js";
import { useTmpDirs } from "./helpers/tmp.js";

/** reset.sh, statically and its iptables part for real; `k8slab reset` on a Vagrant lab. */

const tmp = useTmpDirs();
const labCwd = useRenderedLab("three-node", tmp);

async function iptablesUsable(): Promise<boolean> {
  if (!isRoot()) return false;
  const r = await execa("iptables-save", ["--version"], { reject: false });
  return r.exitCode === 0;
}
const canIptables = await iptablesUsable();

describe("reset.sh", () => {
  it.each([["three-node"], ["single-node"], ["pi-cluster"]])(
    "is rendered for every node of %s and passes shellcheck",
    async (name) => {
      const cwd = await tmp();
      const { dir, plan } = await renderLabDir({ lab: name, cwd });
      const scripts = plan.nodes.map((n) => join(dir, "provision", n.name, "reset.sh"));
      const sc = await execa("shellcheck", ["-S", "style", ...scripts], {
        reject: false,
        all: true,
      });
      expect(sc.all).toBe("");
      expect(sc.exitCode).toBe(0);
      // An SSH lab (the Pi lab) has no Vagrantfile: its machines run reset.sh over SSH.
      if (plan.lab.provider.name === "ssh") return;
      const vagrantfile = await readFile(join(dir, "Vagrantfile"), "utf8");
      for (const n of plan.nodes) {
        expect(vagrantfile).toContain(
          `node.vm.provision "reset", type: "shell", path: 'provision/${n.name}/reset.sh', run: "never"`,
        );
      }
    },
  );

  it.skipIf(!canIptables)(
    "removes the docker phase's, flannel's, kube-proxy's and the kubelet's iptables rules, and nothing else",
    async () => {
      const cwd = await labCwd();
      const script = await readFile(join(cwd, "lab", "provision", "minion1", "reset.sh"), "utf8");
      const fn = /# BEGIN iptables\n([\s\S]*?)# END iptables\n/.exec(script)?.[1];
      expect(fn).toBeDefined();
      const ns = `k8slab-reset-${randomBytes(3).toString("hex")}`;
      const inNs = (command: string) =>
        execa("ip", ["netns", "exec", ns, "bash", "-c", command], { all: true, reject: false });
      const theirs = [
        "iptables -N USER-CHAIN",
        "iptables -A USER-CHAIN -j RETURN",
        "iptables -A INPUT -p tcp --dport 22 -j ACCEPT",
        "iptables -A FORWARD -s 10.9.0.0/16 -j ACCEPT",
        "iptables -t nat -A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE",
      ];
      const ours = [
        // The docker phase (lab pod network 10.1.0.0/16).
        "iptables -t nat -A POSTROUTING -s 10.1.0.0/16 ! -d 10.1.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE",
        // flannel v0.10's FORWARD rules for the pod network.
        "iptables -A FORWARD -s 10.1.0.0/16 -j ACCEPT",
        "iptables -A FORWARD -d 10.1.0.0/16 -j ACCEPT",
        // The kubelet's and kube-proxy's chains, as 1.9 makes them.
        "iptables -t nat -N KUBE-MARK-MASQ",
        "iptables -t nat -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "iptables -t nat -N KUBE-POSTROUTING",
        `iptables -t nat -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -m mark --mark 0x4000/0x4000 -j MASQUERADE`,
        `iptables -t nat -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`,
        "iptables -t nat -N KUBE-SERVICES",
        "iptables -t nat -N KUBE-SVC-NPX46M4PTMTKRN6Y",
        `iptables -t nat -A KUBE-SERVICES -d 10.32.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y`,
        `iptables -t nat -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
        `iptables -t nat -A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
        "iptables -N KUBE-FIREWALL",
        `iptables -A KUBE-FIREWALL -m comment --comment "kubernetes firewall for dropping marked packets" -m mark --mark 0x8000/0x8000 -j DROP`,
        "iptables -A INPUT -j KUBE-FIREWALL",
        "iptables -A OUTPUT -j KUBE-FIREWALL",
        "iptables -N KUBE-FORWARD",
        `iptables -A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`,
      ];
      await execa("ip", ["netns", "add", ns]);
      try {
        const setup = await inNs(theirs.join(" && "));
        expect(setup.all).toBe("");
        const before = (await inNs("iptables-save | grep -v '^#'")).stdout;
        expect((await inNs(ours.join(" && "))).exitCode).toBe(0);
        expect((await inNs("iptables-save")).stdout).toContain("KUBE-SERVICES");
        const reset = await inNs(`${fn}\niptables_reset\niptables_reset`);
        expect(reset.all).toBe("");
        expect(reset.exitCode).toBe(0);
        expect((await inNs("iptables-save | grep -v '^#'")).stdout).toBe(before);
      } finally {
        await execa("ip", ["netns", "delete", ns], { reject: false });
      }
    },
  );
});

describe("k8slab reset", () => {
  it("of a Vagrant lab refuses without --in-place, naming destroy", async () => {
    const cwd = await labCwd();
    const r = await cli(["reset", "--dir", "lab"], { cwd });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("runs on Vagrant VMs: destroy them to start over");
    expect(r.stderr).toContain("k8slab destroy three-node");
  });

  it("--in-place runs each node's reset provisioner and forgets the nodes' phases and the stages", async () => {
    const cwd = await labCwd();
    const state = {
      version: 2,
      lab: "three-node",
      phases: {
        master: { base: { digest: "x", at: "2026-01-01T00:00:00.000Z" } },
        minion1: { base: { digest: "x", at: "2026-01-01T00:00:00.000Z" } },
      },
      stages: { etcd: { verifiedAt: "2026-01-01T00:00:00.000Z", detail: "3 members", passes: 1 } },
    };
    await writeFile(join(cwd, "lab", "state.json"), JSON.stringify(state));
    const fake = await createFakeBin(join(cwd, "fakes"), { vagrant: { rules: [] } });
    const r = await cli(["reset", "--dir", "lab", "--in-place", "--json"], {
      cwd,
      env: fake.env({ ...process.env }),
    });
    expect(r.code, r.stderr).toBe(0);
    const calls = (await fake.callsOf("vagrant")).map((c) => c.args.join(" ")).sort();
    expect(calls).toEqual([
      "provision master --provision-with reset --machine-readable",
      "provision minion1 --provision-with reset --machine-readable",
      "provision minion2 --provision-with reset --machine-readable",
    ]);
    expect(r.stderr).not.toContain("moved");
    const out = JSON.parse(r.stdout) as { ok: boolean; reset: string[] };
    expect(out).toMatchObject({ ok: true, reset: ["master", "minion1", "minion2"] });
    const after = JSON.parse(await readFile(join(cwd, "lab", "state.json"), "utf8")) as {
      phases: object;
      stages: object;
    };
    expect(after.phases).toEqual({});
    expect(after.stages).toEqual({});
  });

  it("a node that fails is named, the others are reset", async () => {
    const cwd = await labCwd();
    const fake = await createFakeBin(join(cwd, "fakes"), {
      vagrant: { rules: [{ args: "^provision minion2 ", exitCode: 1, stderr: "boom" }] },
    });
    const r = await cli(["reset", "--dir", "lab", "--in-place"], {
      cwd,
      env: fake.env({ ...process.env }),
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/reset failed on minion2/);
    expect(r.stderr).toContain("master: reset done");
  });
});
