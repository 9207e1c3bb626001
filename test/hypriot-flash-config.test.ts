import { describe, expect, it } from "vitest";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { parse, parseDocument } from "yaml";
import { formatProblem } from "../src/lab/problems.js";
import { renderBoards, renderInventory, writeFlashConfig } from "../src/hypriot/flash-config.js";
import {
  builtinPiLabsDir,
  piLabJsonSchemaText,
  validatePiLabText,
  type PiLab,
} from "../src/hypriot/pi-lab.js";
import { cli } from "./helpers/cli.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();

const KEY =
  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMw2Z6x1H3n2yqvJ0f3Y0r8aLQ1bZ4Jz7wQ9vK2mN5pE pi@crew";

function builtinText(): Promise<string> {
  return readFile(join(builtinPiLabsDir(), "pi-cluster.yaml"), "utf8");
}

async function edited(edits: [(string | number)[], unknown][]): Promise<string> {
  const doc = parseDocument(await builtinText());
  for (const [path, value] of edits) {
    if (value === undefined) doc.deleteIn(path);
    else doc.setIn(path, doc.createNode(value));
  }
  return doc.toString();
}

async function lab(edits: [(string | number)[], unknown][] = []): Promise<PiLab> {
  const { lab: l, problems } = validatePiLabText("lab.yaml", await edited(edits));
  if (!l) throw new Error(problems.map(formatProblem).join("\n"));
  return l;
}

async function problems(edits: [(string | number)[], unknown][]): Promise<string[]> {
  return validatePiLabText("lab.yaml", await edited(edits)).problems.map(formatProblem);
}

describe("the Pi cluster lab", () => {
  it("the built-in lab is valid: one master and two nodes named like the seed's", async () => {
    const { lab: l, problems: p } = validatePiLabText("pi-cluster.yaml", await builtinText());
    expect(l?.master.hostname).toBe("bee42-crew-01-001");
    expect(l?.nodes.map((n) => n.hostname)).toEqual(["bee42-crew-01-002", "bee42-crew-01-003"]);
    expect(l?.user.name).toBe("pirate");
    // Only the reminder that the example key is an example.
    expect(p.map((x) => x.severity)).toEqual(["warning"]);
    expect(formatProblem(p[0]!)).toMatch(
      /pi-cluster\.yaml:\d+:\d+ user\.sshAuthorizedKeys\.0: .*example key/,
    );
  });

  it("labs/pi/schema.json is generated from the zod schema (compared as JSON: prettier formats the file)", async () => {
    const onDisk = JSON.parse(
      await readFile(join(builtinPiLabsDir(), "schema.json"), "utf8"),
    ) as unknown;
    expect(onDisk).toEqual(JSON.parse(piLabJsonSchemaText()));
  });

  it("defaults the user name to pirate", async () => {
    const l = await lab([[["user", "name"], undefined]]);
    expect(l.user.name).toBe("pirate");
  });

  const hostile: [string, (string | number)[], unknown][] = [
    ["a hostname with a command", ["master", "hostname"], "pi$(reboot)"],
    ["a hostname with a newline", ["nodes", 0, "hostname"], "pi\nruncmd: [reboot]"],
    ["a hostname with a quote", ["nodes", 1, "hostname"], "pi'x"],
    ["a hostname: line smuggled in", ["master", "hostname"], "a\nhostname: evil"],
    ["a user with a backtick", ["user", "name"], "pi`id`"],
    [
      "a key with a newline",
      ["user", "sshAuthorizedKeys", 0],
      `${KEY}\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ x`,
    ],
    ["a key with a command option", ["user", "sshAuthorizedKeys", 0], `command="reboot" ${KEY}`],
    ["a key that is not a key", ["user", "sshAuthorizedKeys", 0], "hello"],
    ["an ip with extra text", ["master", "ip"], "192.168.0.11; reboot"],
    ["a dns server that is not an address", ["network", "dns", 0], "8.8.8.8 && id"],
    ["an image with a $", ["image"], "hypriotos-$(id).img.zip"],
    ["a cluster name with a bracket", ["name"], "cluster]\n[all"],
  ];
  it.each(hostile)("rejects %s", async (_what, path, value) => {
    const lines = await problems([[path, value]]);
    expect(lines.join("\n")).toMatch(new RegExp(`lab\\.yaml:\\d+:\\d+ ${path.join("\\.")}: `));
  });

  it("checks addresses across boards", async () => {
    const lines = await problems([
      [["nodes", 0, "ip"], "192.168.0.11"],
      [["nodes", 1, "ip"], "192.168.1.13"],
      [["nodes", 1, "hostname"], "bee42-crew-01-001"],
      [["network", "gateway"], "10.0.0.1"],
    ]);
    const text = lines.join("\n");
    expect(text).toMatch(/nodes\.0\.ip: 192\.168\.0\.11 is used by bee42-crew-01-001/);
    expect(text).toMatch(
      /nodes\.1\.ip: 192\.168\.1\.13 is outside network\.cidr 192\.168\.0\.0\/24/,
    );
    expect(text).toMatch(/nodes\.1\.hostname: bee42-crew-01-001 is also the hostname of master/);
    expect(text).toMatch(/network\.gateway: 10\.0\.0\.1 is outside/);
  });

  it("needs a key, or no one can log in", async () => {
    const lines = await problems([[["user", "sshAuthorizedKeys"], []]]);
    expect(lines.join("\n")).toMatch(/user\.sshAuthorizedKeys: at least one SSH public key/);
  });

  it("needs network.cidr for a static ip, and allows boards without one (DHCP)", async () => {
    expect((await problems([[["network", "cidr"], undefined]])).join("\n")).toMatch(
      /master\.ip: a static ip needs network\.cidr/,
    );
    const l = await lab([
      [["network"], { domain: "local" }],
      [["master", "ip"], undefined],
      [["nodes"], [{ hostname: "bee42-crew-01-002" }]],
    ]);
    expect(renderBoards(l).every((b) => !b.userData.includes("write_files"))).toBe(true);
  });
});

describe("cloud-init files", () => {
  it("every user-data parses as YAML, starts with #cloud-config and has hostname and a users block with the key", async () => {
    const l = await lab([[["user", "sshAuthorizedKeys"], [KEY]]]);
    const boards = renderBoards(l);
    expect(boards.map((b) => b.hostname)).toEqual([
      "bee42-crew-01-001",
      "bee42-crew-01-002",
      "bee42-crew-01-003",
    ]);
    for (const b of boards) {
      expect(b.userData.split("\n")[0]).toBe("#cloud-config");
      const doc = parse(b.userData) as Record<string, unknown>;
      expect(doc.hostname).toBe(b.hostname);
      expect(doc.manage_etc_hosts).toBe(true);
      const users = doc.users as Record<string, unknown>[];
      expect(users).toHaveLength(1);
      expect(users[0]).toMatchObject({
        name: "pirate",
        ssh_authorized_keys: [KEY],
        lock_passwd: true,
      });
      // flash -n rewrites every line containing "hostname:": there is exactly one.
      expect(b.userData.split("\n").filter((line) => line.includes("hostname:"))).toEqual([
        `hostname: ${b.hostname}`,
      ]);
      const meta = parse(b.metaData) as Record<string, unknown>;
      expect(meta["instance-id"]).toBe(b.instanceId);
      expect(meta["local-hostname"]).toBe(b.hostname);
    }
    expect(new Set(boards.map((b) => b.instanceId)).size).toBe(boards.length);
  });

  it("writes the static address for dhcpcd (HypriotOS 1.9+) with gateway and dns", async () => {
    const [master] = renderBoards(await lab());
    const doc = parse(master!.userData) as {
      write_files: { path: string; content: string }[];
      runcmd: string[];
    };
    expect(doc.write_files).toHaveLength(1);
    expect(doc.write_files[0]!.path).toBe("/etc/dhcpcd.conf");
    const content = doc.write_files[0]!.content;
    expect(content).toMatch(/^interface eth0$/m);
    expect(content).toMatch(/^static ip_address=192\.168\.0\.11\/24$/m);
    expect(content).toMatch(/^static routers=192\.168\.0\.1$/m);
    expect(content).toMatch(/^static domain_name_servers=192\.168\.0\.1$/m);
    expect(doc.runcmd).toEqual(["systemctl restart avahi-daemon", "systemctl restart dhcpcd"]);
  });

  it("writes /etc/network/interfaces.d/eth0 for ifupdown (HypriotOS 1.7/1.8), without gateway when none is set", async () => {
    const [, node] = renderBoards(
      await lab([
        [["network", "method"], "ifupdown"],
        [["network", "gateway"], undefined],
      ]),
    );
    const doc = parse(node!.userData) as { write_files: { path: string; content: string }[] };
    expect(doc.write_files[0]!.path).toBe("/etc/network/interfaces.d/eth0");
    expect(doc.write_files[0]!.content).toContain(
      "iface eth0 inet static\n    address 192.168.0.12\n    netmask 255.255.255.0\n",
    );
    expect(doc.write_files[0]!.content).not.toContain("gateway");
  });

  it("the inventory has the seed's group layout", async () => {
    const text = renderInventory(await lab());
    const sections = text
      .split("\n")
      .filter((l) => l.startsWith("["))
      .map((l) => l.slice(1, -1));
    expect(sections).toEqual([
      "cluster-1-master",
      "cluster-1-nodes",
      "cluster-1:children",
      "cluster-1:vars",
      "master:children",
      "nodes:children",
    ]);
    expect(text).toContain("[cluster-1-master]\n192.168.0.11\n");
    expect(text).toContain("[cluster-1-nodes]\n192.168.0.12\n192.168.0.13\n");
    expect(text).toContain('fqdn_master="bee42-crew-01-001.local"');
    expect(text).toContain('network_address_master="192.168.0.11"');
    expect(text).toContain("[master:children]\ncluster-1-master\n");
    expect(text).toContain("[nodes:children]\ncluster-1-nodes\n");
  });

  it("uses <hostname>.local in the inventory for a board on DHCP", async () => {
    const text = renderInventory(await lab([[["nodes", 1, "ip"], undefined]]));
    expect(text).toContain("[cluster-1-nodes]\n192.168.0.12\nbee42-crew-01-003.local\n");
  });
});

/** The command through the real CLI entry (main.ts), in-process. */
function runFlashConfig(args: string[], cwd: string) {
  return cli(["flash-config", ...args], { cwd });
}

describe("k8slab flash-config", () => {
  it("writes user-data and meta-data per board and the inventory, and prints one flash command per board", async () => {
    const cwd = await tmp();
    const r = await runFlashConfig(["pi-cluster", "--out", "pi-flash"], cwd);
    expect(r.code, r.stderr).toBe(0);
    expect((await readdir(join(cwd, "pi-flash"))).sort()).toEqual([
      "bee42-crew-01-001",
      "bee42-crew-01-002",
      "bee42-crew-01-003",
      "cluster",
    ]);
    expect(r.stdout.trimEnd().split("\n")).toEqual(
      ["001", "002", "003"].map(
        (n) =>
          `flash --userdata pi-flash/bee42-crew-01-${n}/user-data --metadata pi-flash/bee42-crew-01-${n}/meta-data hypriotos-rpi-v1.9.0.img.zip`,
      ),
    );
    expect(r.stdout).not.toMatch(/ -n | --hostname /);
    expect(r.stderr).toMatch(/example key/);
    const userData = await readFile(
      join(cwd, "pi-flash", "bee42-crew-01-002", "user-data"),
      "utf8",
    );
    expect(userData.startsWith("#cloud-config\n")).toBe(true);
    expect((parse(userData) as { hostname: string }).hostname).toBe("bee42-crew-01-002");
  });

  it("takes a lab file and --image, and prints JSON with --json", async () => {
    const cwd = await tmp();
    await writeFile(join(cwd, "crew.yaml"), await edited([[["user", "sshAuthorizedKeys"], [KEY]]]));
    const r = await runFlashConfig(
      [
        "crew.yaml",
        "--out",
        "out dir",
        "--image",
        "/images/hypriotos-rpi-k8slab-1.img.zip",
        "--json",
      ],
      cwd,
    );
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { warnings: unknown[]; boards: { flash: string }[] };
    expect(out.warnings).toEqual([]);
    expect(out.boards[0]!.flash).toBe(
      "flash --userdata 'out dir/bee42-crew-01-001/user-data' --metadata 'out dir/bee42-crew-01-001/meta-data' /images/hypriotos-rpi-k8slab-1.img.zip",
    );
  });

  it("exits 2 and writes nothing for an invalid lab", async () => {
    const cwd = await tmp();
    await writeFile(join(cwd, "bad.yaml"), await edited([[["master", "hostname"], "Bad_Host"]]));
    const r = await runFlashConfig(["bad.yaml", "--out", "out"], cwd);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/bad\.yaml:\d+:\d+ master\.hostname: must be a hostname/);
    expect(await readdir(cwd)).toEqual(["bad.yaml"]);
  });

  it("refuses an --out path that flash would evaluate", async () => {
    const cwd = await tmp();
    const r = await runFlashConfig(["pi-cluster", "--out", "x$(id)"], cwd);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/flash cannot pass on/);
  });

  it("says which labs exist for an unknown name", async () => {
    const r = await runFlashConfig(["three-pi", "--out", "x"], await tmp());
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/no built-in Pi cluster lab called "three-pi"/);
  });

  it("writeFlashConfig returns the written paths", async () => {
    const cwd = await tmp();
    const result = await writeFlashConfig({ lab: "pi-cluster", cwd, out: "o" });
    expect(result.inventory).toBe(join(cwd, "o", "cluster"));
    expect(result.boards[0]!.userData).toBe(join(cwd, "o", "bee42-crew-01-001", "user-data"));
  });
});
