import { describe, expect, it } from "vitest";
import { factChecks, parseFacts } from "../src/doctor/ssh-nodes.js";
import { validateLabText } from "../src/lab/load.js";
import { editedLab } from "./helpers/labs.js";

/** The doctor's verdicts on what it reads from an SSH lab's node (issue 15). */
const { lab } = validateLabText(
  "lab.yaml",
  editedLab("three-node", [
    [["provider", "name"], "ssh"],
    [["ssh"], { user: "pirate" }],
  ]),
);
const node = lab!.nodes[0]!;
const V1 = ["cpuset", "cpu", "cpuacct", "memory", "devices", "freezer", "pids"];
const facts = (over: {
  arch?: string;
  fs?: string;
  off?: string[];
  unmounted?: string[];
  modules?: Record<string, string>;
}) =>
  parseFacts(
    [
      `arch ${over.arch ?? "x86_64"}`,
      `cgroupfs ${over.fs ?? "tmpfs"}`,
      ...V1.map((c) => `controller ${c} ${over.off?.includes(c) ? 0 : 1}`),
      ...V1.filter((c) => !over.unmounted?.includes(c)).map(
        (c) => `mounted rw,nosuid,${c === "cpu" ? "cpu,cpuacct" : c}`,
      ),
      ...Object.entries({
        vxlan: "loaded",
        br_netfilter: "loadable",
        bridge: "loaded",
        overlay: "built-in",
        ...over.modules,
      }).map(([m, s]) => `module ${m} ${s}`),
    ].join("\n"),
  );
const verdicts = (f: ReturnType<typeof parseFacts>) =>
  Object.fromEntries(factChecks(lab!, node, f).map((i) => [i.name, `${i.verdict}: ${i.detail}`]));

describe("doctor's node facts", () => {
  it("a fitting amd64 node with cgroup v1 and the modules passes", () => {
    expect(verdicts(facts({}))).toEqual({
      "master: architecture": "ok: x86_64 (amd64)",
      "master: cgroups": "ok: cgroup v1 with cpu, cpuacct, cpuset, memory, devices, freezer",
      "master: kernel": "ok: vxlan loaded, br_netfilter loadable, bridge loaded, overlay built-in",
    });
  });

  it("names what does not fit: a 64-bit ARM board, cgroup v2 only, no vxlan or overlay", () => {
    const v = verdicts(
      facts({
        arch: "aarch64",
        fs: "cgroup2fs",
        modules: { vxlan: "missing", overlay: "missing" },
      }),
    );
    expect(v["master: architecture"]).toBe(
      "fail: aarch64 (arm64), but the lab's artifacts for this node are amd64",
    );
    expect(v["master: cgroups"]).toBe("fail: only cgroup v2 (/sys/fs/cgroup is cgroup2)");
    expect(v["master: kernel"]).toMatch(
      /^fail: missing kernel features: vxlan \(flannel's backend\); overlay/,
    );
  });

  it("a disabled memory controller (a Raspberry Pi's default) and an unmounted one are told apart", () => {
    expect(verdicts(facts({ off: ["memory"] }))["master: cgroups"]).toMatch(
      /^fail: .*disables the cgroup controllers memory/,
    );
    expect(verdicts(facts({ unmounted: ["freezer"] }))["master: cgroups"]).toBe(
      "fail: no cgroup v1 hierarchy for freezer is mounted",
    );
  });

  it("bridge stands in for br_netfilter; with neither the kernel check fails", () => {
    expect(verdicts(facts({ modules: { br_netfilter: "missing" } }))["master: kernel"]).toMatch(
      /^ok/,
    );
    expect(
      verdicts(facts({ modules: { br_netfilter: "missing", bridge: "missing" } }))[
        "master: kernel"
      ],
    ).toMatch(/^fail: missing kernel features: br_netfilter or bridge/);
  });
});
