import { describe, expect, it } from "vitest";
import { runDoctor } from "../src/doctor/doctor.js";
import { validateLabText } from "../src/lab/load.js";
import type { Runner } from "../src/util/exec.js";
import { editedLab } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();

/** Vagrant answering `box list --machine-readable` as 2.3 does: name, provider, version per box. */
function vagrantWithBoxes(boxes: [name: string, provider: string][]): Runner {
  return async (file, args) => {
    if (file === "vagrant" && args[0] === "--version")
      return { stdout: "Vagrant 2.3.4", stderr: "", exitCode: 0 };
    if (file === "vagrant" && args[0] === "box" && args[1] === "list") {
      const stdout = boxes
        .flatMap(([name, provider], i) => [
          `170000000${i},,ui,info,${name} (${provider}%!(VAGRANT_COMMA) 0)`,
          `170000000${i},,box-name,${name}`,
          `170000000${i},,box-provider,${provider}`,
          `170000000${i},,box-version,0`,
        ])
        .join("\n");
      return { stdout, stderr: "", exitCode: 0 };
    }
    if (file === "vagrant" && args[0] === "plugin")
      return { stdout: "vagrant-libvirt (0.11.2, system)", stderr: "", exitCode: 0 };
    if (file === "virsh")
      return { stdout: "Running against daemon: 9.0.0", stderr: "", exitCode: 0 };
    if (file === "VBoxManage") return { stdout: "7.0.6r155176", stderr: "", exitCode: 0 };
    throw new Error(`${file} not found`);
  };
}

const labOf = (text: string) => validateLabText("lab.yaml", text).lab!;

describe("doctor: the box for the chosen provider", () => {
  const check = async (
    text: string,
    provider: "virtualbox" | "libvirt",
    boxes: [string, string][],
  ) =>
    (
      await runDoctor({
        lab: labOf(text),
        provider,
        dir: await tmp(),
        runner: vagrantWithBoxes(boxes),
      })
    ).find((i) => i.name === "box")!;

  it("the built-in lab names a box per provider: ubuntu/xenial64 for VirtualBox, a libvirt box for libvirt", async () => {
    const lab = editedLab("three-node", []);
    expect(await check(lab, "virtualbox", [])).toMatchObject({
      verdict: "ok",
      detail: "ubuntu/xenial64 for virtualbox is downloaded by vagrant up",
    });
    expect(await check(lab, "libvirt", [["ubuntu/xenial64", "virtualbox"]])).toMatchObject({
      verdict: "ok",
      detail: "generic/ubuntu1604 for libvirt is downloaded by vagrant up",
    });
    expect(await check(lab, "libvirt", [["generic/ubuntu1604", "libvirt"]])).toMatchObject({
      verdict: "ok",
      detail: "generic/ubuntu1604 is added for libvirt",
    });
  });

  it("fails early, with the fix, when the lab names no box for the provider", async () => {
    const onlyVbox = editedLab("three-node", [
      [["box"], { virtualbox: { name: "ubuntu/xenial64" } }],
    ]);
    const item = await check(onlyVbox, "libvirt", []);
    expect(item).toMatchObject({ verdict: "fail", detail: "the lab names no box for libvirt" });
    expect(item.hint).toMatch(/add a box published for libvirt to the lab file/);
  });

  it("fails when a local box was added for another provider only", async () => {
    const local = editedLab("three-node", [[["box"], { name: "mybox" }]]);
    const item = await check(local, "libvirt", [["mybox", "virtualbox"]]);
    expect(item).toMatchObject({
      verdict: "fail",
      detail: "mybox is added only for virtualbox, not for libvirt",
    });
    expect(item.hint).toMatch(/vagrant box add --provider libvirt mybox/);
    expect(await check(local, "virtualbox", [["mybox", "virtualbox"]])).toMatchObject({
      verdict: "ok",
    });
    // Neither added nor fetchable (no catalogue name, no url).
    expect(await check(local, "virtualbox", [])).toMatchObject({
      verdict: "fail",
      detail: "mybox is not added and has no url to fetch it from",
    });
  });
});
