import { describe, expect, it } from "vitest";
import { createHash, randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { defaultBindHost, servedName, startKernelServer } from "../src/hypriot/kernel-server.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

async function curl(args: string[]) {
  return execa("curl", ["--silent", "--show-error", "--max-time", "10", ...args], {
    reject: false,
  });
}

describe("kernel server", () => {
  it("serves the one .deb over loopback, byte for byte, and is gone after close()", async () => {
    const dir = await tmp();
    const deb = join(dir, "raspberrypi-kernel_20181007-162516_armhf.deb");
    const content = randomBytes(3 * 1024 * 1024 + 17); // more than one stream chunk
    await writeFile(deb, content);

    // Advertise the loopback address for the test (the default is VirtualBox's 10.0.2.2).
    const server = await startKernelServer({
      file: deb,
      advertiseHost: "k8slab.test",
      bindHost: "127.0.0.1",
      port: 0,
    });
    const local = `http://127.0.0.1:${server.port}/raspberrypi-kernel_20181007-162516_armhf.deb`;
    expect(server.url).toBe(
      `http://k8slab.test:${server.port}/raspberrypi-kernel_20181007-162516_armhf.deb`,
    );

    const out = join(dir, "download.deb");
    const get = await curl(["--fail", "-o", out, local]);
    expect(get.exitCode, String(get.stderr)).toBe(0);
    expect(sha256(await readFile(out))).toBe(sha256(content));

    const head = await curl(["--fail", "-I", local]);
    expect(String(head.stdout)).toMatch(new RegExp(`Content-Length: ${content.length}`, "i"));

    const other = await curl([
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      `http://127.0.0.1:${server.port}/etc/passwd`,
    ]);
    expect(String(other.stdout)).toBe("404");
    const traversal = await curl([
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      "--path-as-is",
      `http://127.0.0.1:${server.port}/../${"raspberrypi-kernel_20181007-162516_armhf.deb"}`,
    ]);
    expect(String(traversal.stdout)).toBe("404");
    const post = await curl(["-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", local]);
    expect(String(post.stdout)).toBe("405");
    expect(server.requests).toBe(5);

    await server.close();
    await server.close(); // idempotent
    const after = await curl(["-o", "/dev/null", local]);
    expect(after.exitCode).toBe(7); // curl: failed to connect (connection refused)
    expect(String(after.stderr)).toMatch(/Could not connect|Connection refused|Failed to connect/i);
  });

  it("closes even while a client holds a keep-alive connection", async () => {
    const dir = await tmp();
    const deb = join(dir, "k.deb");
    await writeFile(deb, "x");
    const server = await startKernelServer({
      file: deb,
      advertiseHost: "k8slab.test",
      bindHost: "127.0.0.1",
      port: 0,
    });
    const res = await fetch(`http://127.0.0.1:${server.port}/k.deb`, {
      headers: { connection: "keep-alive" },
    });
    expect(await res.text()).toBe("x");
    const started = Date.now();
    await server.close();
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it("binds to loopback for VirtualBox NAT (10.0.2.2 is the host's 127.0.0.1) and to the advertised address otherwise", () => {
    expect(defaultBindHost("10.0.2.2")).toBe("127.0.0.1");
    expect(defaultBindHost("192.168.121.1")).toBe("192.168.121.1");
  });

  it("serves odd file names under a plain one", () => {
    expect(servedName("/x/raspberrypi-kernel_1.2_armhf.deb")).toBe(
      "raspberrypi-kernel_1.2_armhf.deb",
    );
    expect(servedName("/x/my kernel $(id).deb")).toBe("kernel.deb");
  });

  it("refuses a missing file, a loopback advertised address and a busy port", async () => {
    const dir = await tmp();
    await expect(startKernelServer({ file: join(dir, "none.deb"), port: 0 })).rejects.toThrow(
      /cannot serve kernel/,
    );
    const deb = join(dir, "k.deb");
    await writeFile(deb, "x");
    await expect(
      startKernelServer({ file: deb, advertiseHost: "127.0.0.1", port: 0 }),
    ).rejects.toThrow(/the VM itself/);
    const first = await startKernelServer({
      file: deb,
      advertiseHost: "k8slab.test",
      bindHost: "127.0.0.1",
      port: 0,
    });
    try {
      await expect(
        startKernelServer({
          file: deb,
          advertiseHost: "k8slab.test",
          bindHost: "127.0.0.1",
          port: first.port,
        }),
      ).rejects.toMatchObject({ hint: expect.stringMatching(/--kernel-port/) });
    } finally {
      await first.close();
    }
  });
});
