import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { K8slabError } from "../errors.js";
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
  /**
   * Addresses to listen on, all on one port (default: `advertise` alone): the lab's host-only
   * address (it exists once the VMs' network is up), and 127.0.0.1 where asked. Never every
   * address of the host.
   */
  listen?: readonly string[] | undefined;
  /** The address the VMs use to reach the host (the host-only network's .1). */
  advertise: string;
  port?: number;
  /** CIDRs allowed to fetch; loopback is always allowed. */
  allow: string[];
}

/** An artifact name as the lab schema allows it, or one with ".sha256": nothing else is served. */
const NAME = /^[a-z][a-z0-9-]{0,40}(\.sha256)?$/;

function allowed(remote: string | undefined, allow: string[]): boolean {
  const ip = (remote ?? "").replace(/^::ffff:/, "");
  if (ip === "127.0.0.1" || ip === "::1") return true;
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(ip)) return false;
  return allow.some((c) => contains(parseCidr(c), ip));
}

/** The artifact a request names ("etcd", or "etcd.sha256" for its checksum); undefined if malformed. */
function requestedName(url: string | undefined): string | undefined {
  if (!url?.startsWith("/")) return undefined;
  const path = url.split("?")[0]!.slice(1);
  let name: string;
  try {
    name = decodeURIComponent(path);
  } catch {
    return undefined; // "GET /%": not a valid percent-encoding
  }
  return NAME.test(name) ? name : undefined;
}

function send(res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, { "content-type": "text/plain", connection: "close" }).end(body);
}

/**
 * Serve the lab's verified artifacts to its VMs over HTTP, by artifact name (GET /etcd, and
 * GET /etcd.sha256 for its checksum). Only those files, only to the lab's networks, only on the
 * given addresses. Every malformed request gets a 4xx answer; none can stop the server.
 */
export async function serveArtifacts(
  artifacts: readonly PulledArtifact[],
  options: ServeOptions,
): Promise<ArtifactServer> {
  const listen = options.listen ?? [options.advertise];
  if (listen.length === 0) throw new Error("serveArtifacts: no address to listen on");
  const byName = new Map(artifacts.map((a) => [a.name, a]));
  const served = new Map<string, number>();
  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    res.on("error", () => res.destroy());
    if (!allowed(req.socket.remoteAddress, options.allow)) return send(res, 403, "forbidden\n");
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", connection: "close" }).end();
      return;
    }
    const name = requestedName(req.url);
    if (name === undefined) return send(res, 400, "bad request: not an artifact name\n");
    const checksumOf = name.endsWith(".sha256")
      ? byName.get(name.slice(0, -".sha256".length))
      : undefined;
    if (checksumOf) return send(res, 200, `${checksumOf.sha256}\n`);
    const artifact = byName.get(name);
    if (!artifact) return send(res, 404, `no artifact ${JSON.stringify(name)}\n`);
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
      () => send(res, 500, "artifact missing from the cache\n"),
    );
  };
  const servers: Server[] = [];
  const closeAll = async (): Promise<void> => {
    await Promise.all(
      servers.map(
        (server) =>
          new Promise<void>((resolve) => {
            server.closeAllConnections();
            server.close(() => resolve());
          }),
      ),
    );
  };
  let port = options.port ?? 0;
  try {
    for (const address of listen) {
      const server = createServer(handle);
      server.keepAliveTimeout = 1_000;
      // Malformed HTTP: answer 400 and drop the connection (also what Node does without this).
      server.on("clientError", (_error, socket) => {
        if (socket.writable) socket.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
        socket.destroy();
      });
      servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, address, () => resolve());
      });
      server.on("error", () => undefined);
      port = (server.address() as AddressInfo).port;
    }
  } catch (error) {
    await closeAll();
    const e = error as NodeJS.ErrnoException;
    throw new K8slabError(
      `cannot serve the lab's artifacts on ${listen.join(", ")} port ${port}: ${e.code ?? e.message}`,
      {
        hint:
          e.code === "EADDRNOTAVAIL"
            ? "the address is not on this host: the lab's host-only network exists once its VMs are up (check ip addr)"
            : "another program uses the port, or the address is wrong; run the command again",
        cause: error,
      },
    );
  }
  return { url: `http://${options.advertise}:${port}`, port, served, close: closeAll };
}
