import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

/** A stand-in for the internet on loopback: serves fixture files and counts every request. */
export interface Upstream {
  base: string;
  hits: Map<string, number>;
  files: Map<string, Buffer>;
  /** Paths that answer 500 this many more times before they work. */
  failures: Map<string, number>;
  server: Server;
}

export async function startUpstream(): Promise<Upstream> {
  const hits = new Map<string, number>();
  const files = new Map<string, Buffer>();
  const failures = new Map<string, number>();
  const server = createServer((req, res) => {
    const path = req.url ?? "/";
    hits.set(path, (hits.get(path) ?? 0) + 1);
    const left = failures.get(path) ?? 0;
    if (left > 0) {
      failures.set(path, left - 1);
      res.writeHead(500).end("try again");
      return;
    }
    const body = files.get(path);
    if (!body) {
      res.writeHead(404).end("not found");
      return;
    }
    res.writeHead(200, { "content-length": body.length }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { base: `http://127.0.0.1:${port}`, hits, files, failures, server };
}

/** Stop it (once), cutting open connections. */
export async function closeUpstream(upstream: Upstream | undefined): Promise<void> {
  if (!upstream?.server.listening) return;
  upstream.server.closeAllConnections();
  await new Promise((resolve) => upstream.server.close(resolve));
}
