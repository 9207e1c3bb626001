import { describe, expect, it } from "vitest";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { createLab } from "../src/converge/converge.js";
import { runDoctor } from "../src/doctor/doctor.js";
import { CommandFailedError } from "../src/errors.js";
import { validateLabText } from "../src/lab/load.js";
import { mergeKubeconfig } from "../src/lifecycle/kubeconfig.js";
import { renderLabDir } from "../src/render/index.js";
import type { Runner } from "../src/util/exec.js";
import {
  errorExit,
  machineStatuses,
  parseMachineReadable,
} from "../src/vagrant/machine-readable.js";
import { Vagrant, VagrantError } from "../src/vagrant/vagrant.js";
import { createFakeBin, type FakeRule } from "./helpers/fake-bin.js";
import { builtinText, editedLab, OFFLINE } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();

describe("vagrant --machine-readable", () => {
  it("parses states, providers, escaped commas and error-exit", () => {
    const lines = parseMachineReadable(
      [
        "1700000000,master,provider-name,virtualbox",
        "1700000000,master,state,running",
        "1700000001,minion1,state,poweroff",
        "1700000002,,ui,info,one%!(VAGRANT_COMMA) two\\nthree",
        "not a machine line",
        "1700000003,,error-exit,Vagrant::Errors::ProviderNotUsable,The provider 'virtualbox' is not usable",
      ].join("\n"),
    );
    expect(machineStatuses(lines)).toEqual([
      { name: "master", state: "running", provider: "virtualbox" },
      { name: "minion1", state: "poweroff", provider: "" },
    ]);
    expect(lines[3]!.data).toEqual(["info", "one, two\nthree"]);
    expect(errorExit(lines)).toEqual({
      kind: "Vagrant::Errors::ProviderNotUsable",
      message: "The provider 'virtualbox' is not usable",
    });
  });
});

describe("the Vagrant module", () => {
  async function fakeVagrant(rules: FakeRule[]) {
    const dir = await tmp();
    const fake = await createFakeBin(
      dir,
      { vagrant: { rules } },
      { recordEnv: ["K8SLAB_ARTIFACTS_URL"] },
    );
    const vagrant = new Vagrant({ cwd: dir, logDir: join(dir, "logs"), env: fake.env() });
    return { fake, dir, vagrant };
  }

  it("turns a failure into one error with the command, exit code, tail and log file", async () => {
    const { vagrant } = await fakeVagrant([
      {
        args: "^up",
        stdout:
          "1,,ui,info,Bringing machine 'master' up\n1,,error-exit,Vagrant::Errors::ProviderNotUsable,VirtualBox is not installed\n",
        exitCode: 1,
      },
    ]);
    const error = (await vagrant.up().catch((e: unknown) => e)) as VagrantError;
    expect(error).toBeInstanceOf(VagrantError);
    expect(error.command).toBe("vagrant up --no-provision --machine-readable");
    expect(error.exitCode).toBe(1);
    expect(error.kind).toBe("Vagrant::Errors::ProviderNotUsable");
    expect(error.transient).toBe(false);
    expect(error.provisioningFailure).toBe(false);
    expect(error.message).toContain("Bringing machine 'master' up");
    expect(await readFile(error.logFile, "utf8")).toContain("VirtualBox is not installed");
  });

  it("tells a failing phase script and a transient SSH error apart", async () => {
    const { vagrant } = await fakeVagrant([
      {
        args: "^provision master",
        stdout:
          "1,master,ui,error,k8slab: phase etcd on master: no etcd binary\n1,,error-exit,Vagrant::Errors::VagrantError,The SSH command responded with a non-zero exit status.\n",
        exitCode: 1,
      },
      {
        args: "^provision minion1",
        stdout: "1,,error-exit,Vagrant::Errors::SSHConnectionTimeout,Timed out\n",
        exitCode: 1,
      },
    ]);
    const script = (await vagrant
      .provision("master", ["etcd"])
      .catch((e: unknown) => e)) as VagrantError;
    expect(script.provisioningFailure).toBe(true);
    const ssh = (await vagrant
      .provision("minion1", ["etcd"])
      .catch((e: unknown) => e)) as VagrantError;
    expect(ssh.transient).toBe(true);
    expect(ssh.provisioningFailure).toBe(false);
  });

  it("passes the provisioner environment and reads the machine states", async () => {
    const { fake, vagrant } = await fakeVagrant([
      { args: "^status", stdout: "1,master,state,running\n1,master,provider-name,libvirt\n" },
      { args: "^provision", stdout: "1,master,ui,info,ok\n" },
    ]);
    expect(await vagrant.status()).toEqual([
      { name: "master", state: "running", provider: "libvirt" },
    ]);
    await vagrant.provision("master", ["base", "pki-upload", "pki"], {
      K8SLAB_ARTIFACTS_URL: "http://192.168.56.1:9",
    });
    const calls = await fake.callsOf("vagrant");
    expect(calls.map((c) => c.args.join(" "))).toEqual([
      "status --machine-readable",
      "provision master --provision-with base,pki-upload,pki --machine-readable",
    ]);
    expect(calls[1]!.env.K8SLAB_ARTIFACTS_URL).toBe("http://192.168.56.1:9");
  });
});

describe("doctor", () => {
  const lab = validateLabText("three-node.yaml", builtinText("three-node")).lab!;
  const runner: (vbox?: string) => Runner = (vbox) => async (file, args) => {
    if (file === "vagrant" && args[0] === "--version")
      return { stdout: "Vagrant 2.3.4", stderr: "", exitCode: 0 };
    if (file === "VBoxManage" && vbox) return { stdout: vbox, stderr: "", exitCode: 0 };
    throw new Error(`${file} not found`);
  };
  const routes = async (lines: string[]) => {
    const dir = await tmp();
    const file = join(dir, "route");
    await writeFile(
      file,
      [
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT",
        ...lines,
      ].join("\n") + "\n",
    );
    return file;
  };

  it("fails when the provider is missing, with a hint", async () => {
    const items = await runDoctor({
      lab,
      provider: "virtualbox",
      dir: await tmp(),
      runner: runner(),
      routesFile: await routes([]),
    });
    const vbox = items.find((i) => i.name === "virtualbox")!;
    expect(vbox.verdict).toBe("fail");
    expect(vbox.hint).toMatch(/--provider libvirt/);
    expect(items.find((i) => i.name === "vagrant")!.verdict).toBe("ok");
  });

  it("checks VirtualBox's host-only range against networks.conf", async () => {
    const dir = await tmp();
    const outside = validateLabText(
      "x.yaml",
      editedLab("three-node", [
        [["network", "hostOnly"], "192.168.1.0/24"],
        [["nodes", 0, "ip"], "192.168.1.165"],
        [["nodes", 1, "ip"], "192.168.1.166"],
        [["nodes", 2, "ip"], "192.168.1.167"],
      ]),
    ).lab!;
    const conf = join(dir, "networks.conf");
    await writeFile(conf, "* 10.0.0.0/8\n");
    const base = {
      provider: "virtualbox" as const,
      dir,
      routesFile: await routes([]),
      vboxNetworksFile: conf,
    };
    const refused = await runDoctor({ ...base, lab: outside, runner: runner("7.0.6r155176") });
    expect(refused.find((i) => i.name === "host-only range")).toMatchObject({ verdict: "fail" });
    expect(refused.find((i) => i.name === "host-only range")!.hint).toContain(conf);
    await writeFile(conf, "* 10.0.0.0/8 192.168.0.0/16\n");
    const allowed = await runDoctor({ ...base, lab: outside, runner: runner("7.0.6r155176") });
    expect(allowed.find((i) => i.name === "host-only range")!.verdict).toBe("ok");
    const old = await runDoctor({ ...base, lab: outside, runner: runner("6.1.26r145957") });
    expect(old.find((i) => i.name === "host-only range")!.verdict).toBe("ok");
  });

  it("fails when the lab's subnet is already routed through another interface (venue Wi-Fi)", async () => {
    // 192.168.56.0/24 via wlan0: /proc/net/route writes addresses little-endian.
    const clash = await routes(["wlan0\t0038A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0"]);
    const items = await runDoctor({
      lab,
      provider: "virtualbox",
      dir: await tmp(),
      runner: runner("7.0.6"),
      routesFile: clash,
    });
    const route = items.find((i) => i.name === "host-only subnet")!;
    expect(route.verdict).toBe("fail");
    expect(route.detail).toMatch(/192\.168\.56\.0\/24 is already routed via wlan0/);
    const fine = await routes(["eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0"]);
    const ok = await runDoctor({
      lab,
      provider: "virtualbox",
      dir: await tmp(),
      runner: runner("7.0.6"),
      routesFile: fine,
    });
    expect(ok.find((i) => i.name === "host-only subnet")!.verdict).toBe("ok");
  });
});

describe("kubeconfig --merge", () => {
  it("adds the lab's context to an existing kubeconfig, keeps the rest and a backup", async () => {
    const dir = await tmp();
    const { dir: labDir } = await renderLabDir({ lab: "single-node", cwd: dir });
    const target = join(dir, "config");
    const mine =
      "apiVersion: v1\nkind: Config\nclusters:\n- name: work\n  cluster:\n    server: https://127.0.0.1:6443\ncontexts:\n- name: work\n  context:\n    cluster: work\n    user: me\nusers:\n- name: me\n  user:\n    token: abc\ncurrent-context: work\n";
    await writeFile(target, mine);
    const merged = await mergeKubeconfig(join(labDir, "pki", "admin.kubeconfig"), target);
    expect(await readFile(merged.backup!, "utf8")).toBe(mine);
    const view = await execa("kubectl", ["config", "view", "--kubeconfig", target, "-o", "json"]);
    const config = JSON.parse(view.stdout) as {
      "current-context": string;
      contexts: { name: string }[];
      clusters: { name: string; cluster: { server: string } }[];
    };
    expect(config["current-context"]).toBe("work");
    expect(config.contexts.map((c) => c.name).sort()).toEqual(
      ["k8slab-single-node", "work"].sort(),
    );
    expect(config.clusters.find((c) => c.name === "k8slab-single-node")!.cluster.server).toBe(
      "https://192.168.56.160:6443",
    );
    // Merging again replaces the lab's entries instead of adding copies.
    await mergeKubeconfig(join(labDir, "pki", "admin.kubeconfig"), target);
    const again = JSON.parse(
      (await execa("kubectl", ["config", "view", "--kubeconfig", target, "-o", "json"])).stdout,
    ) as {
      contexts: unknown[];
    };
    expect(again.contexts).toHaveLength(2);
  });
});

describe("create's handling of Vagrant failures", () => {
  it("a permanent Vagrant error stops at once, naming the command and the log", async () => {
    const cwd = await tmp();
    await writeFile(join(cwd, "lab.yaml"), editedLab("single-node", OFFLINE));
    const calls: string[] = [];
    const runner: Runner = async (file, args) => {
      calls.push([file, ...args].join(" "));
      if (file === "VBoxManage") return { stdout: "7.0.6r155176", stderr: "", exitCode: 0 };
      if (args[0] === "--version") return { stdout: "Vagrant 2.3.4", stderr: "", exitCode: 0 };
      if (args[0] === "status") return { stdout: "1,k8s,state,running\n", stderr: "", exitCode: 0 };
      throw new CommandFailedError({
        command: `${file} ${args.join(" ")}`,
        exitCode: 1,
        outputTail:
          "1,,error-exit,Vagrant::Errors::ProviderNotUsable,The provider 'virtualbox' that was requested is not usable\n",
      });
    };
    const error = (await createLab({ lab: "lab.yaml", cwd, env: {}, runner, pollMs: 10 }).catch(
      (e: unknown) => e,
    )) as VagrantError;
    expect(error).toBeInstanceOf(VagrantError);
    expect(error.kind).toBe("Vagrant::Errors::ProviderNotUsable");
    expect(error.message).toMatch(
      /vagrant provision k8s --provision-with base,pki-upload,pki,etcd/,
    );
    expect(calls.filter((c) => c.startsWith("vagrant provision"))).toHaveLength(1);
  });
});

describe("doctor for libvirt", () => {
  const runner: Runner = async (file, args) => {
    if (file === "vagrant" && args[0] === "plugin")
      return { stdout: "vagrant-libvirt (0.11.2, system)", stderr: "", exitCode: 0 };
    if (file === "vagrant") return { stdout: "Vagrant 2.3.4", stderr: "", exitCode: 0 };
    if (file === "virsh")
      return { stdout: "Running against daemon: 9.0.0", stderr: "", exitCode: 0 };
    throw new Error(`${file} not found`);
  };
  const labWith = (driver: string) =>
    validateLabText(
      "x.yaml",
      editedLab("three-node", [[["provider"], { name: "libvirt", libvirt: { driver } }]]),
    ).lab!;

  it("reports the plugin, libvirtd and which virtualisation the VMs get", async () => {
    const dir = await tmp();
    const present = join(dir, "kvm");
    await writeFile(present, "");
    const missing = join(dir, "no-kvm");
    const item = async (driver: string, kvmDevice: string) =>
      (await runDoctor({ lab: labWith(driver), provider: "libvirt", dir, runner, kvmDevice })).find(
        (i) => i.name === "virtualisation",
      )!;
    expect(await item("auto", present)).toMatchObject({
      verdict: "ok",
      detail: "KVM (/dev/kvm is usable)",
    });
    expect(await item("auto", missing)).toMatchObject({ verdict: "warn" });
    expect(await item("qemu", missing)).toMatchObject({ verdict: "ok" });
    expect(await item("kvm", missing)).toMatchObject({ verdict: "fail" });
    const all = await runDoctor({
      lab: labWith("qemu"),
      provider: "libvirt",
      dir,
      runner,
      kvmDevice: missing,
    });
    expect(
      all.filter((i) => ["vagrant-libvirt", "libvirtd"].includes(i.name)).map((i) => i.verdict),
    ).toEqual(["ok", "ok"]);
  });
});
