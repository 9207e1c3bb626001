import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { contains, parseCidr } from "../util/ipv4.js";
import type { PulledArtifact } from "./cache.js";

export interface ArtifactServer {
  /** Base URL as seen from the VMs, e.g. http://192.168.56.1:40123 */
  url: string;
  port: number;
  /** How many GET requests each artifact answered. */
  served: Map<string, number>;
  close(): Promise<void>;
}

export interface ServeOptions {
  /** Address to listen on (default: every address; requests are filtered by `allow`). */
  listen?: string;
  /** The address the VMs use to reach the host (the host-only network's .1). */
  advertise: string;
  port?: number;
  /** CIDRs allowed to fetch; loopback is always allowed. */
  allow: string[];
}

function allowed(remote: string | undefined, allow: string[]): boolean {
  const ip = (remote ?? "").replace(/^::ffff:/, "");
  if (ip === "127.0.0.1" || ip === "::1") return true;
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(ip)) return false;
  return allow.some((c) => contains(parseCidr(c), ip));
}

/**
 * Serve the lab's verified artifacts to its VMs over HTTP, by artifact name
 * (GET /etcd). Only those files, only to the lab's networks.
 */
export async function serveArtifacts(
  artifacts: readonly PulledArtifact[],
  options: ServeOptions,
): Promise<ArtifactServer> {
  const byName = new Map(artifacts.map((a) => [a.name, a]));
  const served = new Map<string, number>();
  const server: Server = createServer((req, res) => {
    if (!allowed(req.socket.remoteAddress, options.allow)) {
      res.writeHead(403).end("forbidden\n");
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname.slice(1));
    const checksumOf = path.endsWith(".sha256")
      ? byName.get(path.slice(0, -".sha256".length))
      : undefined;
    if (checksumOf) {
      res.writeHead(200, { "content-type": "text/plain" }).end(`${checksumOf.sha256}\n`);
      return;
    }
    const name = path;
    const artifact = byName.get(name);
    if (!artifact) {
      res.writeHead(404).end(`no artifact ${JSON.stringify(name)}\n`);
      return;
    }
    stat(artifact.path).then(
      (st) => {
        res.writeHead(200, {
          "content-type": "application/octet-stream",
          "content-length": st.size,
          "x-sha256": artifact.sha256,
        });
        if (req.method === "HEAD") {
          res.end();
          return;
        }
        served.set(name, (served.get(name) ?? 0) + 1);
        const stream = createReadStream(artifact.path);
        stream.on("error", () => res.destroy());
        stream.pipe(res);
      },
      () => res.writeHead(500).end("artifact missing from the cache\n"),
    );
  });
  server.keepAliveTimeout = 1_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, options.listen ?? "0.0.0.0", () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${options.advertise}:${port}`,
    port,
    served,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
