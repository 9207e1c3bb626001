import { describe, expect, it } from "vitest";
import { readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { parse, parseDocument } from "yaml";
import { formatProblem } from "../src/lab/problems.js";
import {
  renderBoards,
  renderInventory,
  writeFlashConfig,
  wpaPsk,
} from "../src/hypriot/flash-config.js";
import {
  builtinPiLabsDir,
  piLabJsonSchemaText,
  validatePiLabText,
  type PiLab,
} from "../src/hypriot/pi-lab.js";
import { cli } from "./helpers/cli.js";
import { findTool } from "./helpers/host.js";
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

  it("writes the static address for dhcpcd (HypriotOS v1.8.0 to v1.12.0) with gateway and dns", async () => {
    const [master] = renderBoards(
      await lab([
        [["hypriotos"], "v1.9.0"],
        [["image"], undefined],
      ]),
    );
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

  it("writes /etc/network/interfaces.d/eth0 for ifupdown (HypriotOS v1.7.x, the built-in lab), without gateway when none is set", async () => {
    const [, node] = renderBoards(await lab([[["network", "gateway"], undefined]]));
    const doc = parse(node!.userData) as { write_files: { path: string; content: string }[] };
    expect(doc.write_files[0]!.path).toBe("/etc/network/interfaces.d/eth0");
    expect(doc.write_files[0]!.content).toContain(
      "iface eth0 inet static\n    address 192.168.0.12\n    netmask 255.255.255.0\n",
    );
    expect(doc.write_files[0]!.content).not.toContain("gateway");
  });

  it("the inventory has the seed's group layout", async () => {
    const text = renderInventory([await lab()]);
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
    const text = renderInventory([await lab([[["nodes", 1, "ip"], undefined]])]);
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
      ".k8slab-flash-config.json", // what flash-config wrote, so a second run knows its own
      "bee42-crew-01-001",
      "bee42-crew-01-002",
      "bee42-crew-01-003",
      "cluster",
    ]);
    expect(r.stdout.trimEnd().split("\n")).toEqual(
      ["001", "002", "003"].map(
        (n) =>
          `flash --userdata pi-flash/bee42-crew-01-${n}/user-data --metadata pi-flash/bee42-crew-01-${n}/meta-data hypriotos-rpi-v1.7.1.img.zip`,
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
    expect(r.stderr).toMatch(/no built-in lab called "three-pi"/);
    expect(r.stderr).toContain("pi-cluster");
  });

  it("writeFlashConfig returns the written paths", async () => {
    const cwd = await tmp();
    const result = await writeFlashConfig({ labs: ["pi-cluster"], cwd, env: {}, out: "o" });
    expect(result.inventory).toBe(join(cwd, "o", "cluster"));
    expect(result.boards[0]!.userData).toBe(join(cwd, "o", "bee42-crew-01-001", "user-data"));
  });
});

describe("the network method follows the HypriotOS release", () => {
  const release = (tag: string): [(string | number)[], unknown][] => [
    [["hypriotos"], tag],
    [["image"], undefined],
  ];
  const eth0File = (l: PiLab) => {
    const doc = parse(renderBoards(l)[0]!.userData) as { write_files?: { path: string }[] };
    return doc.write_files?.[0]?.path;
  };

  it.each([
    ["v1.7.1", "/etc/network/interfaces.d/eth0"],
    ["v1.8.0", "/etc/dhcpcd.conf"],
    ["v1.9.0", "/etc/dhcpcd.conf"],
    ["v1.12.0", "/etc/dhcpcd.conf"],
    ["v1.12.1", undefined],
    ["v1.12.3", undefined],
  ])("%s: the static address goes to %s", async (tag, path) => {
    expect(eth0File(await lab(release(tag)))).toBe(path);
  });

  it("refuses a method the release ignores, with the release's reason", async () => {
    const v19 = (await problems([...release("v1.9.0"), [["network", "method"], "ifupdown"]])).join(
      "\n",
    );
    expect(v19).toMatch(
      /lab\.yaml:\d+:\d+ network\.method: HypriotOS v1\.9\.0 ignores ifupdown: .*dhcpcd.*PR #224/,
    );
    expect(v19).toMatch(/hint: remove network\.method \(k8slab uses dhcpcd for v1\.9\.0\)/);
    const v1123 = (await problems([...release("v1.12.3"), [["network", "method"], "dhcpcd"]])).join(
      "\n",
    );
    expect(v1123).toMatch(/network\.method: HypriotOS v1\.12\.3 ignores dhcpcd: .*masks dhcpcd/);
  });

  it("refuses a release without cloud-init, an image of another release, and a lab that names none", async () => {
    expect((await problems(release("v1.6.0"))).join("\n")).toMatch(
      /hypriotos: v1\.6\.0: HypriotOS before v1\.7\.0 has no cloud-init/,
    );
    expect((await problems([[["image"], "hypriotos-rpi-v1.9.0.img.zip"]])).join("\n")).toMatch(
      /image: hypriotos-rpi-v1\.9\.0\.img\.zip is HypriotOS v1\.9\.0, but hypriotos says v1\.7\.1/,
    );
    expect(
      (
        await problems([
          [["hypriotos"], undefined],
          [["image"], "hypriotos-rpi-k8slab-20240101-000000.img.zip"],
        ])
      ).join("\n"),
    ).toMatch(/hypriotos: say which HypriotOS release .* is/);
  });

  it("takes the release from the image name, and warns about one newer than k8slab knows", async () => {
    const l = await lab([
      [["hypriotos"], undefined],
      [["image"], "hypriotos-rpi-v1.9.0.img.zip"],
    ]);
    expect(eth0File(l)).toBe("/etc/dhcpcd.conf");
    const { problems: p } = validatePiLabText("lab.yaml", await edited(release("v1.13.0")));
    expect(p.map(formatProblem).join("\n")).toMatch(
      /hypriotos: warning: k8slab knows HypriotOS releases up to v1\.12\.3; it assumes v1\.13\.0 .* \(network-config\)/,
    );
  });

  it("v1.12.1 and later: /boot/network-config per board, copied by flash --file; cloud-init renders it to a static eth0", async () => {
    const cwd = await tmp();
    await writeFile(join(cwd, "new.yaml"), await edited(release("v1.12.3")));
    const result = await writeFlashConfig({ labs: ["new.yaml"], cwd, env: {}, out: "o" });
    const [master] = result.boards;
    expect(master!.flash).toBe(
      "flash --userdata o/bee42-crew-01-001/user-data --metadata o/bee42-crew-01-001/meta-data --file o/bee42-crew-01-001/network-config hypriotos-rpi-v1.12.3.img.zip",
    );
    const config = parse(await readFile(master!.networkConfig!, "utf8")) as unknown;
    expect(config).toEqual({
      version: 1,
      config: [
        {
          type: "physical",
          name: "eth0",
          subnets: [
            {
              type: "static",
              address: "192.168.0.11",
              netmask: "255.255.255.0",
              gateway: "192.168.0.1",
              dns_nameservers: ["192.168.0.1"],
            },
          ],
        },
      ],
    });
    // No dhcpcd.conf: dhcpcd is masked on these releases.
    expect(await readFile(master!.userData, "utf8")).not.toContain("dhcpcd");
  });
});

const cloudInit = await findTool("cloud-init");
const ansible = await findTool("ansible-inventory");

describe.skipIf(!cloudInit)(
  `the real cloud-init validator${cloudInit ? "" : " (skipped: cloud-init is not installed; scripts/install-test-deps.sh installs it)"}`,
  () => {
    async function cloudInitRun(args: string[]) {
      const r = await execa("cloud-init", args, { reject: false, all: true, timeout: 120_000 });
      return { exitCode: r.exitCode, output: String(r.all ?? "") };
    }

    it("accepts every user-data flash-config writes: each release's network method, Wi-Fi, DHCP boards", async () => {
      const cwd = await tmp();
      const variants: [string, [(string | number)[], unknown][]][] = [
        ["seed.yaml", []],
        [
          "stretch.yaml",
          [
            [["hypriotos"], "v1.9.0"],
            [["image"], undefined],
            [["name"], "cluster-2"],
            [["network", "wifi"], { ssid: "bee42 crew", country: "DE", pskEnv: "PSK" }],
            [["nodes", 1, "wifi"], false],
          ],
        ],
        [
          "buster.yaml",
          [
            [["hypriotos"], "v1.12.3"],
            [["image"], undefined],
            [["name"], "cluster-3"],
            [["network", "wifi"], { ssid: "bee42-crew", country: "DE", pskEnv: "PSK" }],
          ],
        ],
        [
          "dhcp.yaml",
          [
            [["name"], "cluster-4"],
            [["network"], { domain: "local" }],
            [["master", "ip"], undefined],
            [["nodes"], [{ hostname: "dhcp-node" }]],
          ],
        ],
      ];
      const files: string[] = [];
      for (const [name, edits] of variants) {
        await writeFile(join(cwd, name), await edited(edits));
        const r = await writeFlashConfig({
          labs: [name],
          cwd,
          env: { PSK: "correct horse battery" },
          out: `out-${name}`,
        });
        files.push(...r.boards.map((b) => b.userData));
      }
      expect(files.length).toBe(11);
      for (const file of files) {
        const { exitCode, output } = await cloudInitRun(["schema", "-c", file]);
        expect(exitCode, `${file}\n${output}`).toBe(0);
        expect(output).toMatch(/Valid cloud-config/);
      }
    }, 300_000);

    it("rejects the hyphenated primary-group k8slab wrote before (so the test can fail)", async () => {
      const dir = await tmp();
      const [b] = renderBoards(await lab());
      const file = join(dir, "user-data");
      await writeFile(file, b!.userData.replace("primary_group:", "primary-group:"));
      const { exitCode, output } = await cloudInitRun(["schema", "-c", file]);
      expect(exitCode).not.toBe(0);
      expect(output).toMatch(/users\.0/);
    }, 120_000);

    it("renders every network-config to the eth0 ifupdown configuration HypriotOS v1.12.1+ applies", async () => {
      const cwd = await tmp();
      await writeFile(
        join(cwd, "buster.yaml"),
        await edited([
          [["hypriotos"], "v1.12.3"],
          [["image"], undefined],
          [["nodes", 1, "ip"], undefined],
        ]),
      );
      const r = await writeFlashConfig({ labs: ["buster.yaml"], cwd, env: {}, out: "o" });
      const rendered: string[] = [];
      for (const b of r.boards) {
        const out = join(cwd, `eni-${b.hostname}`);
        const run = await cloudInitRun([
          "devel",
          "net-convert",
          "--network-data",
          b.networkConfig!,
          "--kind",
          "yaml",
          "--distro",
          "debian",
          "--output-kind",
          "eni",
          "--directory",
          out,
        ]);
        expect(run.exitCode, run.output).toBe(0);
        const files = await readdir(out, { recursive: true });
        const eni = files.find((f) => String(f).endsWith("50-cloud-init"));
        rendered.push(await readFile(join(out, String(eni)), "utf8"));
      }
      expect(rendered[0]).toMatch(
        /iface eth0 inet static\n\s+address 192\.168\.0\.11\/24\n\s+dns-nameservers 192\.168\.0\.1\n\s+gateway 192\.168\.0\.1/,
      );
      expect(rendered[2]).toMatch(/iface eth0 inet dhcp/);
    }, 300_000);
  },
);

describe("Wi-Fi for the boards", () => {
  const WIFI = { ssid: "IEEE", country: "DE", pskEnv: "K8SLAB_WIFI_PSK" };

  it("derives the PSK the way wpa_passphrase does (IEEE 802.11i test vector)", () => {
    expect(wpaPsk("IEEE", "password")).toBe(
      "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e",
    );
    expect(wpaPsk("IEEE", "F42C6FC52DF0EBEF9EBB4B90B38A5F902E83FE1B135A70E23AED762E9710A12E")).toBe(
      "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e",
    );
  });

  async function wifiFiles(edits: [(string | number)[], unknown][]) {
    const cwd = await tmp();
    await writeFile(join(cwd, "w.yaml"), await edited([[["network", "wifi"], WIFI], ...edits]));
    const r = await writeFlashConfig({
      labs: ["w.yaml"],
      cwd,
      env: { K8SLAB_WIFI_PSK: "password" },
      out: "o",
    });
    const docs = [];
    for (const b of r.boards) {
      const text = await readFile(b.userData, "utf8");
      expect(text).not.toContain("password");
      expect((await stat(b.userData)).mode & 0o777).toBe(0o600);
      docs.push(
        parse(text) as { write_files?: { path: string; content: string }[]; runcmd: string[] },
      );
    }
    return docs;
  }

  it("ifupdown (v1.7.x): wpa_supplicant.conf with the PSK, a wlan0 stanza and ifup wlan0; a board can stay off", async () => {
    const [master, node] = await wifiFiles([[["nodes", 0, "wifi"], false]]);
    const paths = master!.write_files!.map((f) => f.path);
    expect(paths).toEqual([
      "/etc/network/interfaces.d/eth0",
      "/etc/wpa_supplicant/wpa_supplicant.conf",
      "/etc/network/interfaces.d/wlan0",
    ]);
    const conf = master!.write_files![1]!.content;
    expect(conf).toMatch(/^country=DE$/m);
    expect(conf).toMatch(/^ {4}ssid="IEEE"$/m);
    expect(conf).toMatch(
      /^ {4}psk=f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e$/m,
    );
    expect(master!.runcmd).toEqual([
      "systemctl restart avahi-daemon",
      "ifdown eth0; ifup eth0",
      "ifup wlan0",
    ]);
    expect(node!.write_files!.map((f) => f.path)).toEqual(["/etc/network/interfaces.d/eth0"]);
  });

  it("dhcpcd (v1.8.0 to v1.12.0): only wpa_supplicant.conf (dhcpcd runs wlan0; a second stanza would double its address)", async () => {
    const [master] = await wifiFiles([
      [["hypriotos"], "v1.9.0"],
      [["image"], undefined],
    ]);
    expect(master!.write_files!.map((f) => f.path)).toEqual([
      "/etc/dhcpcd.conf",
      "/etc/wpa_supplicant/wpa_supplicant.conf",
    ]);
    expect(master!.runcmd).toContain("wpa_cli -i wlan0 reconfigure");
  });

  it("reads the passphrase from a file next to the lab, and says what is missing", async () => {
    const cwd = await tmp();
    await writeFile(
      join(cwd, "w.yaml"),
      await edited([[["network", "wifi"], { ssid: "IEEE", country: "DE", pskFile: "wifi.psk" }]]),
    );
    await writeFile(join(cwd, "wifi.psk"), "password\n");
    const r = await writeFlashConfig({ labs: ["w.yaml"], cwd, env: {}, out: "o" });
    expect(await readFile(r.boards[0]!.userData, "utf8")).toContain(
      "psk=f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e",
    );
    await writeFile(join(cwd, "e.yaml"), await edited([[["network", "wifi"], WIFI]]));
    const res = await runFlashConfig(["e.yaml", "--out", "o2"], cwd);
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/network\.wifi\.pskEnv: K8SLAB_WIFI_PSK is not set/);
  });

  it("refuses the passphrase in the lab file, an SSID wpa_supplicant cannot quote, and wifi on a board without network.wifi", async () => {
    expect(
      (await problems([[["network", "wifi"], { ssid: "x", country: "DE", psk: "secret" }]])).join(
        "\n",
      ),
    ).toMatch(/network\.wifi\.psk: unknown key/);
    expect(
      (await problems([[["network", "wifi"], { ssid: 'a"b', country: "DE", pskEnv: "P" }]])).join(
        "\n",
      ),
    ).toMatch(/network\.wifi\.ssid: must be 1 to 32 printable ASCII/);
    expect((await problems([[["master", "wifi"], true]])).join("\n")).toMatch(
      /master\.wifi: there is no network\.wifi to join/,
    );
  });
});

describe("several clusters in one inventory (the seed's one cluster file)", () => {
  async function twoClusters(cwd: string) {
    await writeFile(join(cwd, "crew-1.yaml"), await builtinText());
    await writeFile(
      join(cwd, "crew-2.yaml"),
      await edited([
        [["name"], "cluster-2"],
        [["master"], { hostname: "bee42-crew-02-001", ip: "192.168.0.21" }],
        [
          ["nodes"],
          [
            { hostname: "bee42-crew-02-002", ip: "192.168.0.22" },
            { hostname: "bee42-crew-02-003" },
          ],
        ],
      ]),
    );
  }

  it("writes each cluster's groups and vars, and master/nodes over all of them", async () => {
    const cwd = await tmp();
    await twoClusters(cwd);
    const r = await runFlashConfig(["crew-1.yaml", "crew-2.yaml", "--out", "pi"], cwd);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trimEnd().split("\n")).toHaveLength(6);
    const text = await readFile(join(cwd, "pi", "cluster"), "utf8");
    expect(text).toContain("[master:children]\ncluster-1-master\ncluster-2-master\n");
    expect(text).toContain("[nodes:children]\ncluster-1-nodes\ncluster-2-nodes\n");
    expect(text).toContain("[cluster-2-nodes]\n192.168.0.22\nbee42-crew-02-003.local\n");
    expect(text).toContain(
      '[cluster-2:vars]\nansible_user=pirate\nfqdn_master="bee42-crew-02-001.local"',
    );
    expect(text).toMatch(
      /^# Note: ansible-inventory warns "Invalid characters were found in group names"/m,
    );
  });

  it("refuses clusters that share a name, a hostname or an address", async () => {
    const cwd = await tmp();
    await writeFile(join(cwd, "a.yaml"), await builtinText());
    await writeFile(
      join(cwd, "b.yaml"),
      await edited([[["nodes"], [{ hostname: "bee42-crew-01-002", ip: "192.168.0.99" }]]]),
    );
    const r = await runFlashConfig(["a.yaml", "b.yaml", "--out", "pi"], cwd);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/b\.yaml: cluster name cluster-1 is also used by a\.yaml/);
    expect(r.stderr).toMatch(/b\.yaml: 192\.168\.0\.11 \(bee42-crew-01-001\) is also in a\.yaml/);
  });

  it.skipIf(!ansible)(
    `the real ansible-inventory reads it: hosts per cluster, each with its cluster's fqdn_master${ansible ? "" : " (skipped: ansible-inventory is not installed; scripts/install-test-deps.sh installs ansible-core)"}`,
    async () => {
      const cwd = await tmp();
      await twoClusters(cwd);
      await runFlashConfig(["crew-1.yaml", "crew-2.yaml", "--out", "pi"], cwd);
      const r = await execa("ansible-inventory", ["-i", join(cwd, "pi", "cluster"), "--list"], {
        timeout: 120_000,
        env: { ANSIBLE_NOCOLOR: "1", ANSIBLE_LOCAL_TEMP: join(cwd, "ansible-tmp"), HOME: cwd },
      });
      const inv = JSON.parse(r.stdout) as {
        _meta: { hostvars: Record<string, Record<string, string>> };
        [group: string]: { children?: string[]; hosts?: string[] } | unknown;
      };
      const group = (name: string) => inv[name] as { children?: string[]; hosts?: string[] };
      expect(group("master").children).toEqual(["cluster-1-master", "cluster-2-master"]);
      expect(group("cluster-2").children).toEqual(["cluster-2-master", "cluster-2-nodes"]);
      expect(group("cluster-2-nodes").hosts).toEqual(["192.168.0.22", "bee42-crew-02-003.local"]);
      expect(inv._meta.hostvars["192.168.0.12"]).toMatchObject({
        fqdn_master: "bee42-crew-01-001.local",
        network_address_master: "192.168.0.11",
        ansible_user: "pirate",
      });
      expect(inv._meta.hostvars["bee42-crew-02-003.local"]).toMatchObject({
        fqdn_master: "bee42-crew-02-001.local",
      });
      // The warning the README and the inventory's header explain.
      expect(r.stderr).toMatch(/Invalid characters were found in group names/);
    },
    180_000,
  );
});

describe("k8slab flash-config --help", () => {
  it("says how to get flash, what it needs on Linux, and that the hyphen warning is harmless", async () => {
    const r = await cli(["flash-config", "--help"], { cwd: await tmp() });
    const text = r.stdout + r.stderr;
    expect(text).toContain("https://github.com/hypriot/flash/releases/download/2.7.2/flash");
    expect(text).toMatch(/sudo, hdparm and udevadm/);
    expect(text).toMatch(/Invalid characters were found in group names.*harmless/s);
  });
});

describe("flash-config --out follows render's rule for directories (issue 12)", () => {
  it("refuses a non-empty directory it did not write, and leaves it as it was", async () => {
    const cwd = await tmp();
    const { mkdir } = await import("node:fs/promises");
    await mkdir(join(cwd, "photos", "bee42-crew-01-001"), { recursive: true });
    await writeFile(join(cwd, "photos", "cluster"), "mine\n");
    await writeFile(join(cwd, "photos", "bee42-crew-01-001", "user-data"), "mine too\n");
    const r = await runFlashConfig(["pi-cluster", "--out", "photos"], cwd);
    expect(r.code).toBe(1); // as render into a directory that is not its own
    expect(r.stderr).toMatch(
      /photos is not empty and is not a directory k8slab flash-config wrote/,
    );
    expect(r.stderr).toContain("hint: choose another --out, or empty it first");
    expect(await readFile(join(cwd, "photos", "cluster"), "utf8")).toBe("mine\n");
    expect(await readFile(join(cwd, "photos", "bee42-crew-01-001", "user-data"), "utf8")).toBe(
      "mine too\n",
    );
    expect((await readdir(join(cwd, "photos"))).sort()).toEqual(["bee42-crew-01-001", "cluster"]);
  });

  it("writes again into its own output, replacing its files and keeping the user's", async () => {
    const cwd = await tmp();
    expect((await runFlashConfig(["pi-cluster", "--out", "pi-flash"], cwd)).code).toBe(0);
    const first = (await readdir(join(cwd, "pi-flash"))).sort();
    await writeFile(join(cwd, "pi-flash", "cluster"), "edited\n");
    await writeFile(join(cwd, "pi-flash", "notes.txt"), "the user's\n");
    const r = await runFlashConfig(["pi-cluster", "--out", "pi-flash"], cwd);
    expect(r.code, r.stderr).toBe(0);
    expect(await readFile(join(cwd, "pi-flash", "cluster"), "utf8")).toMatch(/cluster-1-master/);
    expect(await readFile(join(cwd, "pi-flash", "notes.txt"), "utf8")).toBe("the user's\n");
    expect((await readdir(join(cwd, "pi-flash"))).sort()).toEqual([...first, "notes.txt"].sort());
    // A board gone from the lab is gone from the output: it is the lab's, as it was written.
    const doc = parseDocument(await builtinText());
    doc.deleteIn(["nodes", 1]);
    await writeFile(join(cwd, "crew.yaml"), doc.toString());
    expect((await runFlashConfig(["crew.yaml", "--out", "pi-flash"], cwd)).code).toBe(0);
    const now = await readdir(join(cwd, "pi-flash"));
    expect(now).not.toContain("bee42-crew-01-003");
    expect(now).toContain("notes.txt");
  });

  it("leaves no temporary or staging files, and removes what a killed run left", async () => {
    const cwd = await tmp();
    expect((await runFlashConfig(["pi-cluster", "--out", "pi-flash"], cwd)).code).toBe(0);
    const { mkdir } = await import("node:fs/promises");
    await mkdir(join(cwd, "pi-flash", ".k8slab-stage-0123abcd", "bee42-crew-01-001"), {
      recursive: true,
    });
    expect((await runFlashConfig(["pi-cluster", "--out", "pi-flash"], cwd)).code).toBe(0);
    const all = await readdir(join(cwd, "pi-flash"), { recursive: true });
    expect(all.filter((f) => /tmp|stage|old|lock/.test(f))).toEqual([]);
  });

  it("a directory with only a killed run's staging directory counts as empty", async () => {
    const cwd = await tmp();
    const { mkdir } = await import("node:fs/promises");
    await mkdir(join(cwd, "out", ".k8slab-stage-0123abcd"), { recursive: true });
    const r = await runFlashConfig(["pi-cluster", "--out", "out"], cwd);
    expect(r.code, r.stderr).toBe(0);
    expect(await readdir(join(cwd, "out"))).not.toContain(".k8slab-stage-0123abcd");
  });
});
