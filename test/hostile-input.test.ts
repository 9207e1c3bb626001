import { describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { parse } from "yaml";
import { validateLabText } from "../src/lab/load.js";
import { renderLabDir } from "../src/render/index.js";
import { builtinText, editedLab } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";
import { vagrantValidate } from "./helpers/vagrant-validate.js";

const tmp = useTmpDirs();
const MARK = "/tmp/k8slab-hostile-ran";

const HOSTILE = [
  `it's "quoted"`,
  `$(touch ${MARK})`,
  `\`touch ${MARK}\``,
  `a\nb`,
  `with spaces; touch ${MARK}`,
  `#{system("touch ${MARK}")}`,
  `x\\' ; touch ${MARK} #`,
  "x".repeat(5000),
];

/** Every string-valued path of a lab with every optional section present. */
function stringPaths(value: unknown, path: (string | number)[] = []): (string | number)[][] {
  if (typeof value === "string") return [path];
  if (Array.isArray(value)) return value.flatMap((v, i) => stringPaths(v, [...path, i]));
  if (value && typeof value === "object") {
    return Object.entries(value).flatMap(([k, v]) => stringPaths(v, [...path, k]));
  }
  return [];
}

const fullLab = editedLab("three-node", [
  [["box", "virtualbox", "version"], ">= 20180309"],
  [["box", "libvirt", "url"], "https://example.invalid/box.box"],
  [["nodes", 1, "labels"], { disktype: "ssd" }],
  [
    ["registry"],
    { server: "registry.example.invalid:5000", username: "bee", passwordEnv: "REG_PASSWORD" },
  ],
]);

describe("hostile strings in every string field", () => {
  const paths = stringPaths(parse(fullLab));

  it("covers the lab's string fields", () => {
    expect(validateLabText("full.yaml", fullLab).problems).toEqual([]);
    expect(paths.length).toBeGreaterThan(25);
  });

  it("are rejected by validation or rendered inert", async () => {
    const accepted: { path: string; value: string }[] = [];
    for (const path of paths) {
      for (const value of HOSTILE) {
        const text = editedLab("three-node", [
          [
            ["registry"],
            {
              server: "registry.example.invalid:5000",
              username: "bee",
              passwordEnv: "REG_PASSWORD",
            },
          ],
          [["nodes", 1, "labels"], { disktype: "ssd" }],
          [path, value],
        ]);
        const { lab, problems } = validateLabText("hostile.yaml", text);
        if (lab) accepted.push({ path: path.join("."), value });
        else expect(problems.some((p) => p.severity === "error")).toBe(true);
      }
    }
    // Only free text may pass; it must come out inert wherever it lands.
    expect([...new Set(accepted.map((a) => a.path))]).toEqual(["description"]);
    // One lab directory for all: re-rendering reuses its PKI, so each value costs no key generation.
    const cwd = await tmp();
    for (const { value } of accepted) {
      const file = join(cwd, "hostile.yaml");
      await writeFile(file, editedLab("three-node", [[["description"], value]]));
      const { dir, files } = await renderLabDir({ lab: file, cwd });
      const scripts = files.filter((f) => f.endsWith(".sh")).map((f) => join(dir, f));
      for (const s of scripts) await execa("bash", ["-n", s]);
      const sc = await execa("shellcheck", ["-S", "warning", ...scripts], {
        reject: false,
        all: true,
      });
      expect(sc.all).toBe("");
      const validate = await vagrantValidate(dir);
      expect(validate.exitCode, validate.output).toBe(0);
      expect(existsSync(MARK)).toBe(false);
    }
  });

  it("the lab file's own name cannot inject into the Vagrantfile", async () => {
    const cwd = await tmp();
    const file = join(cwd, `x'$(touch ${MARK.replace(/\//g, "_")}).yaml`);
    await writeFile(file, builtinText("single-node"));
    const { dir } = await renderLabDir({ lab: file, cwd });
    const validate = await vagrantValidate(dir);
    expect(validate.exitCode, validate.output).toBe(0);
    expect(existsSync(MARK)).toBe(false);
  });
});
