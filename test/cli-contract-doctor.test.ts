import { describe, expect, it } from "vitest";
import { chmod, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { runDoctor } from "../src/doctor/doctor.js";
import { CommandFailedError } from "../src/errors.js";
import type { Runner } from "../src/util/exec.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();

const NO_SOCKET =
  "error: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory";
const DENIED =
  "error: Failed to connect socket to '/var/run/libvirt/libvirt-sock': Permission denied";

/** A host: Vagrant with vagrant-libvirt, virsh failing with `virshError`, `id` answering groups. */
function host(virshError: string, groups: { session: string; listed?: string }): Runner {
  return async (file, args) => {
    if (file === "vagrant" && args[0] === "plugin")
      return { stdout: "vagrant-libvirt (0.11.2, system)", stderr: "", exitCode: 0 };
    if (file === "vagrant") return { stdout: "Vagrant 2.3.4", stderr: "", exitCode: 0 };
    if (file === "virsh")
      throw new CommandFailedError({
        command: `virsh ${args.join(" ")}`,
        exitCode: 1,
        outputTail: `error: failed to connect to the hypervisor\n${virshError}`,
      });
    if (file === "id")
      return {
        stdout: args.length > 1 ? (groups.listed ?? groups.session) : groups.session,
        stderr: "",
        exitCode: 0,
      };
    throw new Error(`${file} not found`);
  };
}

/** A folder holding these (empty, executable) programs: the only place libvirt is looked for. */
async function programs(...names: string[]): Promise<string[]> {
  const dir = join(await tmp(), "sbin");
  await mkdir(dir);
  for (const name of names) {
    await writeFile(join(dir, name), "#!/bin/sh\nexit 1\n");
    await chmod(join(dir, name), 0o755);
  }
  return [dir];
}

async function libvirtd(options: {
  runner: Runner;
  programDirs: string[];
  uid: number;
  socket: boolean;
}) {
  const dir = await tmp();
  const socket = join(dir, "libvirt-sock");
  if (options.socket) await writeFile(socket, "");
  const items = await runDoctor({
    provider: "libvirt",
    dir,
    runner: options.runner,
    programDirs: options.programDirs,
    uid: options.uid,
    libvirtSocket: socket,
    kvmDevice: join(dir, "no-kvm"),
  });
  return items.find((i) => i.name === "libvirtd")!;
}

describe("doctor --provider libvirt: the libvirtd hint fits the host", () => {
  it("not installed (root): install it; no group to join", async () => {
    const item = await libvirtd({
      runner: host(NO_SOCKET, { session: "root" }),
      programDirs: await programs(),
      uid: 0,
      socket: false,
    });
    expect(item.verdict).toBe("fail");
    expect(item.detail).toMatch(/not installed/);
    expect(item.hint).toMatch(/apt-get install libvirt-daemon-system/);
    expect(item.hint).not.toMatch(/group|sudo/);
  });

  it("installed but not running (root): start libvirtd; neither install nor a group", async () => {
    const item = await libvirtd({
      runner: host(NO_SOCKET, { session: "root" }),
      programDirs: await programs("libvirtd", "virsh"),
      uid: 0,
      socket: false,
    });
    expect(item.verdict).toBe("fail");
    expect(item.detail).toMatch(/libvirtd is installed but not running/);
    expect(item.hint).toBe("start it: systemctl start libvirtd");
  });

  it("installed but not running (a user in the libvirt group): sudo systemctl start libvirtd", async () => {
    const item = await libvirtd({
      runner: host(NO_SOCKET, { session: "alice libvirt" }),
      programDirs: await programs("libvirtd", "virsh"),
      uid: 1000,
      socket: false,
    });
    expect(item.hint).toBe("start it: sudo systemctl start libvirtd");
  });

  it("running, the user not in the libvirt group: join it; neither install nor start", async () => {
    const item = await libvirtd({
      runner: host(DENIED, { session: "alice sudo" }),
      programDirs: await programs("libvirtd", "virsh"),
      uid: 1000,
      socket: true,
    });
    expect(item.verdict).toBe("fail");
    expect(item.detail).toMatch(/Permission denied/);
    expect(item.hint).toMatch(/sudo adduser \$USER libvirt, then log out and in again/);
    expect(item.hint).not.toMatch(/apt-get|systemctl/);
  });

  it("running, the user added to the group but this login predates it: log in again", async () => {
    const item = await libvirtd({
      runner: host(DENIED, { session: "alice sudo", listed: "alice sudo libvirt" }),
      programDirs: await programs("libvirtd", "virsh"),
      uid: 1000,
      socket: true,
    });
    expect(item.hint).toMatch(/log out and in again \(or run: newgrp libvirt\)/);
    expect(item.hint).not.toMatch(/adduser/);
  });
});
