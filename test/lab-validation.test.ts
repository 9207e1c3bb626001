import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { builtinIndexPath } from "../src/lab/builtin-index.js";
import { builtinIndexText, labJsonSchemaText } from "../src/lab/json-schema.js";
import { builtinLabsDir, listBuiltinLabs, validateLabText } from "../src/lab/load.js";
import { builtinText, editedLab, lines, problemsOf } from "./helpers/labs.js";

const errorsOf = (text: string) => problemsOf(text).filter((p) => p.severity === "error");
const warningsOf = (text: string) => problemsOf(text).filter((p) => p.severity === "warning");

describe("built-in labs", () => {
  it("are valid without warnings and described", async () => {
    const labs = await listBuiltinLabs();
    expect(labs.map((l) => l.name)).toEqual(["single-node", "three-node"]);
    for (const l of labs) {
      expect(problemsOf(builtinText(l.name))).toEqual([]);
      expect(l.description.length).toBeGreaterThan(10);
    }
  });

  it("three-node is the seed 004 topology inside VirtualBox's default range", () => {
    const { lab } = validateLabText("three-node.yaml", builtinText("three-node"));
    expect(lab).toBeDefined();
    const nodes = lab!.nodes.map((n) => [n.name, n.ip, [...n.roles].sort().join("+")]);
    expect(nodes).toEqual([
      ["master", "192.168.56.165", "control-plane+etcd"],
      ["minion1", "192.168.56.166", "etcd+worker"],
      ["minion2", "192.168.56.167", "etcd+worker"],
    ]);
    expect(lab!.versions.kubernetes).toBe("v1.9.3");
    expect(lab!.images.hyperkube).toMatch(/hyperkube.*:v1\.9\.3$/);
    expect(lab!.cluster.flannelBackend).toBe("vxlan");
    expect(lab!.addons).toEqual(["kube-dns", "dashboard"]);
  });

  it("single-node runs everything on one schedulable VM", () => {
    const { lab } = validateLabText("single-node.yaml", builtinText("single-node"));
    expect(lab!.nodes).toHaveLength(1);
    expect([...lab!.nodes[0]!.roles].sort()).toEqual(["control-plane", "etcd", "worker"]);
    expect(lab!.cluster.schedulableMaster).toBe(true);
  });

  it("labs/index.json lists every built-in lab as its file says (run `npm run schema` after changing one)", async () => {
    expect(await readFile(builtinIndexPath(), "utf8")).toBe(await builtinIndexText());
  });

  it("labs/schema.json is generated from the zod schema (run `npm run schema` after changing it)", () => {
    const onDisk = readFileSync(join(builtinLabsDir(), "schema.json"), "utf8");
    expect(onDisk).toBe(labJsonSchemaText());
    const parsed = JSON.parse(onDisk) as {
      properties: Record<string, unknown>;
      additionalProperties: boolean;
    };
    expect(Object.keys(parsed.properties)).toContain("nodes");
    expect(parsed.additionalProperties).toBe(false);
  });
});

describe("schema errors carry file, line, column and dotted path", () => {
  it("a typo such as memroy: is an error pointing at the key, with a suggestion", () => {
    const text = builtinText("three-node").replace("    memory: 1024\n", "    memroy: 1024\n");
    const out = lines(errorsOf(text));
    const line = text.split("\n").findIndex((l) => l.includes("memroy")) + 1;
    expect(out).toEqual([
      `lab.yaml:${line}:5 nodes.1.memroy: unknown key "memroy"\n    hint: did you mean memory?`,
    ]);
  });

  it("an unknown key where the schema offers a choice of shapes lists the keys of every shape", () => {
    const text = editedLab("three-node", [[["box", "version"], "1.0"]]);
    const [problem, ...rest] = errorsOf(text);
    expect(rest).toEqual([]);
    expect(problem?.path).toBe("box.version");
    expect(problem?.hint).toBe(
      "this takes one of {name, version, url} or {virtualbox, libvirt}, not a mix",
    );
  });

  it("reports every problem at once, in file order", () => {
    const text = editedLab("three-node", [
      [["name"], "Bad_Name"],
      [["nodes", 0, "cpus"], 0],
      [
        ["nodes", 2, "roles"],
        ["etcd", "bogus"],
      ],
      [["versions", "etcd"], "latest"],
    ]);
    const problems = errorsOf(text);
    expect(problems.map((p) => p.path)).toEqual([
      "name",
      "nodes.0.cpus",
      "nodes.2.roles.1",
      "versions.etcd",
    ]);
    const textLines = text.split("\n");
    const shown = problems.map((p) => textLines[p.line! - 1]!.slice(p.col! - 1));
    expect(shown).toEqual(["Bad_Name", "0", "bogus", "latest"]);
  });

  it("a missing required section names the path", () => {
    const out = errorsOf(editedLab("three-node", [[["versions"], undefined]]));
    expect(out.map((p) => [p.path, p.message])).toEqual([["versions", "is required (object)"]]);
  });

  it.each([
    ["empty file", "", "the file is empty"],
    ["comment only", "# nothing\n", "the file is empty"],
    ["a list", "- a\n- b\n", "must be a map"],
    ["a scalar", "hello\n", "must be a map"],
    ["syntax error", "name: [a, b\nnodes: 1\n", ""],
    ["duplicate key", "name: a\nname: b\n", "appears twice"],
    ["tab indentation", "name: a\nnodes:\n\t- name: b\n", ""],
  ])("%s is reported with a position", (_label, text, message) => {
    const problems = errorsOf(text);
    expect(problems.length).toBeGreaterThan(0);
    expect(problems[0]!.line).toBeGreaterThan(0);
    expect(problems[0]!.message).toContain(message);
  });

  it("an alias bomb is refused quickly", () => {
    let text = 'a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]\n';
    for (let i = 1; i < 10; i++)
      text += `a${i}: &a${i} [${Array(10)
        .fill(`*a${i - 1}`)
        .join(",")}]\n`;
    const problems = errorsOf(text);
    expect(problems[0]!.message).toMatch(/alias|resource exhaustion/i);
  });

  it("a file far too large to be a lab file is refused without parsing", () => {
    const problems = errorsOf(`name: x\n#${"x".repeat(300 * 1024)}\n`);
    expect(problems[0]!.message).toMatch(/larger than/);
  });
});

describe("cross-field rules", () => {
  const cases: [string, [(string | number)[], unknown][], string, RegExp][] = [
    [
      "duplicate node names",
      [[["nodes", 2, "name"], "minion1"]],
      "nodes.2.name",
      /already the name of nodes\.1/,
    ],
    [
      "duplicate node IPs",
      [[["nodes", 1, "ip"], "192.168.56.165"]],
      "nodes.1.ip",
      /used by master/,
    ],
    [
      "IP outside the host-only network",
      [[["nodes", 1, "ip"], "192.168.57.10"]],
      "nodes.1.ip",
      /outside the host-only network/,
    ],
    ["network address", [[["nodes", 1, "ip"], "192.168.56.0"]], "nodes.1.ip", /network address/],
    ["broadcast address", [[["nodes", 1, "ip"], "192.168.56.255"]], "nodes.1.ip", /broadcast/],
    ["gateway address", [[["nodes", 1, "ip"], "192.168.56.1"]], "nodes.1.ip", /host's own address/],
    [
      "pod and service networks overlap",
      [
        [["cluster", "serviceNetwork"], "10.1.2.0/24"],
        [["cluster", "dnsIp"], "10.1.2.10"],
      ],
      "cluster.podNetwork",
      /overlaps cluster\.serviceNetwork/,
    ],
    [
      "pod network overlaps the host-only network",
      [[["cluster", "podNetwork"], "192.168.0.0/16"]],
      "cluster.podNetwork",
      /overlaps network\.hostOnly/,
    ],
    [
      "Docker's default network",
      [[["cluster", "podNetwork"], "172.16.0.0/12"]],
      "cluster.podNetwork",
      /Docker's default/,
    ],
    [
      "Vagrant's NAT network",
      [
        [["cluster", "serviceNetwork"], "10.0.0.0/16"],
        [["cluster", "dnsIp"], "10.0.0.10"],
      ],
      "cluster.serviceNetwork",
      /Vagrant's NAT/,
    ],
    [
      "DNS IP outside the service network",
      [[["cluster", "dnsIp"], "10.33.0.10"]],
      "cluster.dnsIp",
      /outside the service network/,
    ],
    [
      "DNS IP is the API server's service IP",
      [[["cluster", "dnsIp"], "10.32.0.1"]],
      "cluster.dnsIp",
      /API server's service address/,
    ],
    [
      "host bits in a CIDR",
      [[["cluster", "podNetwork"], "10.1.2.0/16"]],
      "cluster.podNetwork",
      /host bits/,
    ],
    [
      "too few node subnets",
      [[["cluster", "podNetwork"], "10.1.0.0/23"]],
      "cluster.podSubnetLength",
      /only 2 subnets .* 3 nodes/,
    ],
    [
      "subnet length not longer than the network",
      [[["cluster", "podSubnetLength"], 16]],
      "cluster.podSubnetLength",
      /must be longer/,
    ],
    [
      "no control-plane node",
      [
        [
          ["nodes", 0, "roles"],
          ["etcd", "worker"],
        ],
      ],
      "nodes",
      /no node has the control-plane role/,
    ],
    [
      "two control-plane nodes",
      [
        [
          ["nodes", 1, "roles"],
          ["etcd", "control-plane"],
        ],
      ],
      "nodes",
      /only one control-plane/,
    ],
    [
      "no etcd member",
      [
        [["nodes", 0, "roles"], ["control-plane"]],
        [["nodes", 1, "roles"], ["worker"]],
        [["nodes", 2, "roles"], ["worker"]],
      ],
      "nodes",
      /no node has the etcd role/,
    ],
    ["not a DNS-1123 node name", [[["nodes", 1, "name"], "Minion_1"]], "nodes.1.name", /DNS-1123/],
    ["lab name that is a path", [[["name"], "../x"]], "name", /DNS-1123/],
    ["lab name with a slash", [[["name"], "a/b"]], "name", /DNS-1123/],
    [
      "an addon without its images",
      [[["images", "dashboard"], undefined]],
      "images",
      /the dashboard addon needs images\.dashboard/,
    ],
    [
      "repeated role",
      [
        [
          ["nodes", 1, "roles"],
          ["etcd", "etcd"],
        ],
      ],
      "nodes.1.roles",
      /must not repeat/,
    ],
  ];
  it.each(cases)("%s", (_label, edits, path, message) => {
    const problems = errorsOf(editedLab("three-node", edits));
    const hit = problems.find((p) => p.path === path && message.test(p.message));
    expect(hit, lines(problems).join("\n")).toBeDefined();
    expect(hit!.line).toBeGreaterThan(0);
  });

  it("warns, without failing, about an even number of etcd members", () => {
    const text = editedLab("three-node", [[["nodes", 2, "roles"], ["worker"]]]);
    expect(errorsOf(text)).toEqual([]);
    expect(
      warningsOf(text)
        .map((w) => w.message)
        .join(),
    ).toMatch(/2 etcd members .* odd number/);
  });

  it("warns about memory below what a role needs", () => {
    const text = editedLab("three-node", [[["nodes", 0, "memory"], 512]]);
    expect(errorsOf(text)).toEqual([]);
    expect(warningsOf(text)[0]).toMatchObject({ path: "nodes.0.memory" });
  });

  it("warns about a host-only network outside VirtualBox's range, naming networks.conf", () => {
    const text = editedLab("three-node", [
      [["network", "hostOnly"], "192.168.1.0/24"],
      [["nodes", 0, "ip"], "192.168.1.165"],
      [["nodes", 1, "ip"], "192.168.1.166"],
      [["nodes", 2, "ip"], "192.168.1.167"],
    ]);
    expect(errorsOf(text)).toEqual([]);
    const [w] = warningsOf(text);
    expect(w).toMatchObject({ path: "network.hostOnly" });
    expect(w!.hint).toContain("/etc/vbox/networks.conf");
  });

  it("does not warn about VirtualBox's range for libvirt labs", () => {
    const text = editedLab("three-node", [
      [["provider", "name"], "libvirt"],
      [["network", "hostOnly"], "192.168.1.0/24"],
      [["nodes", 0, "ip"], "192.168.1.165"],
      [["nodes", 1, "ip"], "192.168.1.166"],
      [["nodes", 2, "ip"], "192.168.1.167"],
    ]);
    expect(problemsOf(text)).toEqual([]);
  });
});

describe("SSH labs (issue 15)", () => {
  const ssh = (edits: [path: (string | number)[], value: unknown][] = []) =>
    editedLab("three-node", [
      [["provider", "name"], "ssh"],
      [["ssh"], { user: "pirate" }],
      ...edits,
    ]);

  it("accept the lab's login, per-node overrides and the host's .1 as a node", () => {
    const text = ssh([
      [["nodes", 1, "ssh"], { host: "10.0.0.5", port: 2222, user: "root" }],
      [["nodes", 2, "ip"], "192.168.56.1"],
    ]);
    expect(errorsOf(text)).toEqual([]);
    const { lab } = validateLabText("lab.yaml", text);
    expect(lab?.ssh).toEqual({ user: "pirate", port: 22, connectTimeoutSeconds: 15 });
    expect(lab?.nodes[1]?.ssh).toEqual({ host: "10.0.0.5", port: 2222, user: "root" });
  });

  it("need ssh: with the login user", () => {
    const text = editedLab("three-node", [[["provider", "name"], "ssh"]]);
    expect(lines(errorsOf(text))).toEqual([
      expect.stringMatching(/provider\.name: a lab whose provider is ssh needs `ssh:`/),
    ]);
  });

  it("ssh settings in a Vagrant lab are an error, not ignored", () => {
    const text = editedLab("three-node", [
      [["ssh"], { user: "pirate" }],
      [["nodes", 0, "ssh"], { port: 2222 }],
    ]);
    expect(
      errorsOf(text)
        .map((p) => p.path)
        .sort(),
    ).toEqual(["nodes.0.ssh", "ssh"]);
  });

  it("reject a login name or key path a shell would read differently", () => {
    const text = ssh([
      [["ssh", "user"], "pi; rm -rf /"],
      [["ssh", "identityFile"], "$(id)"],
    ]);
    expect(errorsOf(text).map((p) => p.path)).toEqual(["ssh.user", "ssh.identityFile"]);
  });
});

describe("one pass over a broken file (issue 12)", () => {
  const lineOf = (text: string, needle: string) =>
    text.split("\n").findIndex((l) => l.includes(needle)) + 1;

  it("a YAML syntax error near the top is shown once, not as a cascade of token errors", () => {
    // An indented first key: the parser reads every later token out of step.
    const text = builtinText("three-node").replace("\nname: three-node", "\n  name: three-node");
    const problems = problemsOf(text);
    expect(problems, lines(problems).join("\n")).toHaveLength(1);
    expect(problems[0]).toMatchObject({ severity: "error", line: lineOf(text, "description:") });
    expect(problems[0]!.hint).toMatch(/indentation/);
  });

  it("a tab as indentation gives its one error, not a made-up duplicate key", () => {
    const text = builtinText("three-node").replace("provider:\n  name:", "provider:\n\tname:");
    const problems = problemsOf(text);
    expect(lines(problems)).toEqual([
      expect.stringMatching(
        new RegExp(`^lab\\.yaml:${lineOf(text, "\tname:")}:\\d+: Tabs are not allowed`),
      ),
    ]);
  });

  it("a duplicate key names the key, at its second occurrence", () => {
    const text = builtinText("three-node").replace(
      "    roles: [etcd, control-plane]\n",
      "    roles: [etcd, control-plane]\n    memory: 4096\n",
    );
    const problems = problemsOf(text);
    expect(lines(problems)).toEqual([
      `lab.yaml:${lineOf(text, "memory: 4096")}:5: key "memory" appears twice in the same map`,
    ]);
  });

  it("an unknown key and a duplicate node IP below it are both reported, in line order", () => {
    const text = editedLab("three-node", [
      [["provider", "nmae"], "virtualbox"],
      [["nodes", 2, "ip"], "192.168.56.165"],
    ]);
    const problems = errorsOf(text);
    expect(lines(problems)).toEqual([
      `lab.yaml:${lineOf(text, "nmae:")}:3 provider.nmae: unknown key "nmae"\n    hint: did you mean name?`,
      expect.stringMatching(
        /^lab\.yaml:\d+:\d+ nodes\.2\.ip: 192\.168\.56\.165 is used by master$/,
      ),
    ]);
    expect(problems[1]!.line).toBeGreaterThan(problems[0]!.line!);
  });

  it("rules are sorted in among schema errors by line", () => {
    const text = editedLab("three-node", [
      [["nodes", 1, "ip"], "192.168.56.165"],
      [["versions", "etcd"], "latest"],
    ]);
    expect(errorsOf(text).map((p) => p.path)).toEqual(["nodes.1.ip", "versions.etcd"]);
  });

  it("a rule that reads a malformed section is skipped, not run on a guess", () => {
    // nodes has an unknown key: the node rules (duplicate IPs) do not run on the other nodes'
    // defaults; the rules on other sections still do.
    const text = editedLab("three-node", [
      [["nodes", 0, "memroy"], 4096],
      [["nodes", 2, "ip"], "192.168.56.165"],
      [["cluster", "dnsIp"], "10.99.0.10"],
    ]);
    expect(errorsOf(text).map((p) => p.path)).toEqual(["nodes.0.memroy", "cluster.dnsIp"]);
  });

  it.each([
    [
      [
        ["nodes", 1, "roles"],
        ["etcd", "workr"],
      ],
      "nodes.1.roles.1",
      "did you mean worker?",
    ],
    [[["cluster", "flannelBackend"], "vxlna"], "cluster.flannelBackend", "did you mean vxlan?"],
  ] as const)("a misspelt enum value gets the nearest allowed one: %j", (edit, path, hint) => {
    const [problem, ...rest] = errorsOf(editedLab("three-node", [edit as never]));
    expect(rest).toEqual([]);
    expect(problem).toMatchObject({ path, hint });
    expect(problem!.message).toMatch(/expected one of/);
  });
});
