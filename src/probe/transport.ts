import { readFile } from "node:fs/promises";
import { request } from "node:https";
import { Socket } from "node:net";
import { join } from "node:path";
import { shellQuote } from "../render/quote.js";

/** Which client certificate a check presents. */
export type Identity = "etcd" | "admin";

export interface HttpAnswer {
  status: number;
  body: string;
}

/** How checks reach the cluster: HTTPS from the host, or through `vagrant ssh` when it cannot. */
export interface Transport {
  readonly kind: "https" | "ssh";
  get(url: string, identity: Identity, timeoutMs: number): Promise<HttpAnswer>;
}

/** Files on the host (lab pki/) for each identity. */
const HOST_FILES: Record<Identity, { cert: string; key: string }> = {
  etcd: { cert: "etcd-client-apiserver.pem", key: "etcd-client-apiserver-key.pem" },
  admin: { cert: "admin.pem", key: "admin-key.pem" },
};

/** Files on the master VM for each identity (its bundle holds no admin key). */
const VM_FILES: Record<Identity, { cert: string; key: string }> = {
  etcd: { cert: "etcd-client-apiserver.pem", key: "etcd-client-apiserver-key.pem" },
  admin: { cert: "apiserver-kubelet-client.pem", key: "apiserver-kubelet-client-key.pem" },
};

export class HttpsTransport implements Transport {
  readonly kind = "https" as const;
  private cache = new Map<string, Buffer>();
  constructor(private readonly pkiDir: string) {}

  private async file(name: string): Promise<Buffer> {
    const hit = this.cache.get(name);
    if (hit) return hit;
    const data = await readFile(join(this.pkiDir, name));
    this.cache.set(name, data);
    return data;
  }

  async get(url: string, identity: Identity, timeoutMs: number): Promise<HttpAnswer> {
    const files = HOST_FILES[identity];
    const [ca, cert, key] = await Promise.all([
      this.file("ca.pem"),
      this.file(files.cert),
      this.file(files.key),
    ]);
    return new Promise((resolve, reject) => {
      const req = request(url, { ca, cert, key, timeout: timeoutMs, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }),
        );
        res.on("error", reject);
      });
      req.on("timeout", () =>
        req.destroy(new Error(`no answer from ${url} within ${timeoutMs} ms`)),
      );
      req.on("error", reject);
      req.end();
    });
  }
}

/** Runs curl on a VM that can reach the private network (the master) with its own certificates. */
export class SshTransport implements Transport {
  readonly kind = "ssh" as const;
  constructor(
    private readonly ssh: (command: string, timeoutMs: number) => Promise<string>,
    private readonly vmPkiDir: string,
  ) {}

  async get(url: string, identity: Identity, timeoutMs: number): Promise<HttpAnswer> {
    const files = VM_FILES[identity];
    const seconds = Math.max(1, Math.ceil(timeoutMs / 1000));
    const command = [
      "sudo curl -sS",
      `--max-time ${seconds}`,
      `--cacert ${shellQuote(`${this.vmPkiDir}/ca.pem`)}`,
      `--cert ${shellQuote(`${this.vmPkiDir}/${files.cert}`)}`,
      `--key ${shellQuote(`${this.vmPkiDir}/${files.key}`)}`,
      "-w '\\n%{http_code}'",
      shellQuote(url),
    ].join(" ");
    const out = (await this.ssh(command, timeoutMs + 30_000)).replace(/\r/g, "").trimEnd();
    const cut = out.lastIndexOf("\n");
    return { status: Number(out.slice(cut + 1)) || 0, body: cut >= 0 ? out.slice(0, cut) : "" };
  }
}

/** Can the host open a TCP connection to this address (is the private network routed here)? */
export function tcpReachable(host: string, port: number, timeoutMs = 3_000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket();
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", (error: NodeJS.ErrnoException) => done(error.code === "ECONNREFUSED"));
    socket.connect(port, host);
  });
}
