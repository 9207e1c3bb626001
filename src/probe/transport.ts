import { readFile } from "node:fs/promises";
import { request } from "node:https";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import { shellQuote } from "../util/quote.js";
import { contains, parseCidr } from "../util/ipv4.js";

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

interface IdentityFiles {
  /** The CA that signed the server's certificate (etcd has its own). */
  ca: string;
  cert: string;
  key: string;
}

const ETCD_CLIENT: IdentityFiles = {
  ca: "etcd-ca.pem",
  cert: "etcd-client-apiserver.pem",
  key: "etcd-client-apiserver-key.pem",
};

/** Files on the host (lab pki/) for each identity. */
const HOST_FILES: Record<Identity, IdentityFiles> = {
  etcd: ETCD_CLIENT,
  admin: { ca: "ca.pem", cert: "admin.pem", key: "admin-key.pem" },
};

/** Files on the master VM for each identity (its bundle holds no admin key). */
const VM_FILES: Record<Identity, IdentityFiles> = {
  etcd: ETCD_CLIENT,
  admin: {
    ca: "ca.pem",
    cert: "apiserver-kubelet-client.pem",
    key: "apiserver-kubelet-client-key.pem",
  },
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
      this.file(files.ca),
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
      `--cacert ${shellQuote(`${this.vmPkiDir}/${files.ca}`)}`,
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

/**
 * Is this host on the lab's private network (VirtualBox's vboxnet or libvirt's bridge holds an
 * address in it)? Only then do checks go straight to the VMs; otherwise the route would lead
 * somewhere else entirely (the default gateway), so checks run on the master through SSH.
 */
export function hostOnLabNetwork(hostOnly: string): boolean {
  const net = parseCidr(hostOnly);
  return Object.values(networkInterfaces()).some((addrs) =>
    (addrs ?? []).some((a) => a.family === "IPv4" && !a.internal && contains(net, a.address)),
  );
}
