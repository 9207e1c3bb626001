import { describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { chmod, mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { Writable } from "node:stream";
import type { CliContext } from "../src/cli/context.js";
import { runCli } from "../src/cli/main.js";
import { cli } from "./helpers/cli.js";
import { createFakeBin, type FakeRule } from "./helpers/fake-bin.js";
import { useRenderedLab } from "./helpers/rendered-lab.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();
/** A working directory with a rendered single-node lab (one VM, `k8s`) in ./lab. */
const labCwd = useRenderedLab("single-node", tmp);

/** A fake vagrant (the only program on PATH) answering these rules. */
async function fakeVagrant(cwd: string, rules: FakeRule[]) {
  const fake = await createFakeBin(join(cwd, "fakes"), { vagrant: { rules } });
  return { fake, env: fake.env({ ...process.env, K8SLAB_CACHE: join(cwd, "cache") }) };
}

const NOT_CREATED: FakeRule = {
  args: "^status",
  stdout: "1,k8s,provider-name,virtualbox\n1,k8s,state,not_created",
};
const RUNNING: FakeRule = {
  args: "^status",
  stdout: "1,k8s,provider-name,virtualbox\n1,k8s,state,running",
};

describe("k8slab ssh", () => {
  it("-c streams the remote command's output as it comes and exits with its status", async () => {
    const cwd = await labCwd();
    const bin = join(cwd, "bin");
    await mkdir(bin);
    const go = join(cwd, "go");
    // Prints a line, then waits (at most 15 s) until the test has seen it, then exits 3.
    await writeFile(
      join(bin, "vagrant"),
      [
        "#!/bin/sh",
        'echo "$*" >>"$FAKE_LOG"',
        '[ "$1" = ssh ] || exit 0',
        "echo 'kubelet line 1'",
        "i=0",
        'while [ ! -e "$FAKE_GO" ]; do',
        "  i=$((i + 1))",
        "  if [ $i -gt 150 ]; then echo 'nobody saw line 1' >&2; exit 99; fi",
        "  sleep 0.1",
        "done",
        "echo 'kubelet line 2' >&2",
        "exit 3",
        "",
      ].join("\n"),
    );
    await chmod(join(bin, "vagrant"), 0o755);
    let stdout = "";
    let stderr = "";
    let seenFirstAt = 0;
    const out = new Writable({
      write(chunk: Buffer, _enc, done) {
        stdout += chunk.toString();
        if (!seenFirstAt && stdout.includes("kubelet line 1")) {
          seenFirstAt = Date.now();
          writeFile(go, "").then(() => done(), done);
        } else done();
      },
    });
    const err = new Writable({
      write(chunk: Buffer, _enc, done) {
        stderr += chunk.toString();
        done();
      },
    });
    const ctx: CliContext = {
      cwd,
      env: {
        ...process.env,
        PATH: `${bin}${delimiter}${process.env.PATH}`,
        FAKE_GO: go,
        FAKE_LOG: join(cwd, "calls"),
      },
      stdout: out,
      stderr: err,
      interactive: false,
    };
    const code = await runCli(
      ["ssh", "k8s", "--dir", "lab", "-c", "sudo journalctl -fu kubelet"],
      ctx,
    );
    expect(code, stderr).toBe(3);
    expect(seenFirstAt).toBeGreaterThan(0);
    expect(stderr).toContain("kubelet line 2");
    expect(stderr).toMatch(/exited with code 3/);
    expect(await readFile(join(cwd, "calls"), "utf8")).toBe(
      "ssh k8s -c sudo journalctl -fu kubelet\n",
    );
  });

  it("exits non-zero when vagrant ssh fails", async () => {
    const cwd = await labCwd();
    const { env } = await fakeVagrant(cwd, [
      { args: "^ssh", stderr: "The VM is not created.", exitCode: 1 },
    ]);
    const run = await cli(["ssh", "k8s", "--dir", "lab"], { cwd, env });
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/vagrant ssh k8s exited with code 1/);
  });
});

describe("k8slab destroy", () => {
  it("of a lab that does not exist exits 0 and says there was nothing to destroy", async () => {
    const cwd = await tmp();
    const { fake, env } = await fakeVagrant(cwd, []);
    for (const args of [
      ["destroy", "three-node", "--force"],
      ["destroy", "--dir", "gone", "--force", "--purge"],
    ]) {
      const run = await cli(args, { cwd, env });
      expect(run.code, run.stderr).toBe(0);
      expect(run.stderr).toMatch(
        /nothing to destroy: there is no lab directory .*(three-node|gone)/,
      );
    }
    expect(await fake.calls()).toEqual([]);
    expect(await readdir(cwd)).toEqual(["fakes"]);
  });

  it("--purge of a lab whose VMs were never created skips vagrant destroy and deletes the directory", async () => {
    const cwd = await labCwd();
    const { fake, env } = await fakeVagrant(cwd, [
      NOT_CREATED,
      { args: "^destroy", stderr: "no machine to destroy", exitCode: 1 },
    ]);
    const run = await cli(["destroy", "--dir", "lab", "--force", "--purge"], { cwd, env });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/no VM of lab single-node was created; deleted /);
    expect(existsSync(join(cwd, "lab"))).toBe(false);
    expect((await fake.callsOf("vagrant")).map((c) => c.args[0])).toEqual(["status"]);

    // With a VM there, vagrant destroy runs (and the PKI stays without --purge).
    const again = await labCwd();
    const running = await fakeVagrant(again, [RUNNING]);
    const kept = await cli(["destroy", "--dir", "lab", "--force"], {
      cwd: again,
      env: running.env,
    });
    expect(kept.code, kept.stderr).toBe(0);
    expect((await running.fake.callsOf("vagrant")).map((c) => c.args.join(" "))).toEqual([
      "status --machine-readable",
      "destroy --force --machine-readable",
    ]);
    expect(existsSync(join(again, "lab", "pki", "ca-key.pem"))).toBe(true);
  });
});

describe("k8slab provision", () => {
  it("on a lab whose VMs are not created fails at once: no download, no vagrant provision", async () => {
    const cwd = await labCwd();
    // Were anything downloaded, it would go to loopback (a closed port), never to the internet.
    const labJson = join(cwd, "lab", "lab.json");
    const saved = JSON.parse(await readFile(labJson, "utf8")) as {
      lab: { artifacts: Record<string, { url: string }> };
    };
    for (const [name, artifact] of Object.entries(saved.lab.artifacts)) {
      artifact.url = `http://127.0.0.1:9/${name}.tar.gz`;
    }
    await writeFile(labJson, JSON.stringify(saved));
    const { fake, env } = await fakeVagrant(cwd, [NOT_CREATED]);
    const run = await cli(["provision", "--dir", "lab", "--phase", "etcd"], { cwd, env });
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/the VMs of lab single-node are not created: k8s/);
    expect(run.stderr).toMatch(/hint: .*k8slab create single-node --dir /);
    expect((await fake.callsOf("vagrant")).map((c) => c.args[0])).toEqual(["status"]);
    expect(existsSync(join(cwd, "cache"))).toBe(false);
    expect(run.stderr).not.toMatch(/127\.0\.0\.1:9|download/i);
  });
});

describe("k8slab status", () => {
  const ETCD_HEALTHY: FakeRule[] = [
    RUNNING,
    { args: "^ssh k8s -c .*/health", stdout: '{"health":"true"}\n200' },
    {
      args: "^ssh k8s -c .*/v2/members",
      stdout:
        '{"members":[{"name":"k8s","peerURLs":["https://192.168.56.160:2380"],"clientURLs":["https://192.168.56.160:2379"]}]}\n200',
    },
  ];

  it("exits 1 when the lab is not healthy (its VM does not exist), listing the problems; 0 when healthy", async () => {
    const cwd = await labCwd();
    const { env } = await fakeVagrant(cwd, [NOT_CREATED]);
    const human = await cli(["status", "--dir", "lab"], { cwd, env });
    expect(human.code).toBe(1);
    expect(human.stdout).toMatch(/problems:\n\s+k8s is not created/);
    expect(human.stderr).toMatch(/error: lab single-node is not healthy: 1 problem/);
    expect(human.stderr).toMatch(/hint: boot and provision its VMs: k8slab create single-node/);
    const json = await cli(["status", "--dir", "lab", "--json"], { cwd, env });
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({
      healthy: false,
      problems: ["k8s is not created"],
    });

    const healthyCwd = await labCwd();
    const healthy = await fakeVagrant(healthyCwd, ETCD_HEALTHY);
    const ok = await cli(["status", "--dir", "lab"], { cwd: healthyCwd, env: healthy.env });
    expect(ok.code, ok.stderr + ok.stdout).toBe(0);
    expect(ok.stdout).toMatch(/etcd: 1 of 1 etcd members healthy/);
    expect(ok.stdout).not.toMatch(/problems/);
    const okJson = await cli(["status", "--dir", "lab", "--json"], {
      cwd: healthyCwd,
      env: healthy.env,
    });
    expect(okJson.code).toBe(0);
    expect(JSON.parse(okJson.stdout)).toMatchObject({ healthy: true, problems: [] });
  });
});

describe("k8slab doctor --json", () => {
  it("prints one object holding the checks", async () => {
    const cwd = await tmp();
    const fake = await createFakeBin(join(cwd, "fakes"), {
      vagrant: { rules: [{ args: "^--version", stdout: "Vagrant 2.3.4" }] },
      VBoxManage: { rules: [{ args: "^--version", stdout: "7.0.6r155176" }] },
    });
    const path = process.env.PATH;
    process.env.PATH = fake.dir; // doctor looks up programs on this process's PATH
    let run: Awaited<ReturnType<typeof cli>>;
    try {
      run = await cli(
        ["doctor", "single-node", "--provider", "virtualbox", "--dir", cwd, "--json"],
        {
          cwd,
        },
      );
    } finally {
      process.env.PATH = path;
    }
    const out = JSON.parse(run.stdout) as { checks: { name: string; verdict: string }[] };
    expect(Array.isArray(out)).toBe(false);
    expect(out.checks.find((c) => c.name === "vagrant")).toMatchObject({ verdict: "ok" });
  });
});
