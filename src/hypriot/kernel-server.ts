import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { isIP } from "node:net";
import { basename, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { K8slabError } from "../errors.js";
import { DEFAULT_KERNEL_PORT, VIRTUALBOX_NAT_HOST } from "./builder-vm.js";

/**
 * A tiny HTTP server for one kernel .deb, so the image builder VM can download a kernel built on
 * this machine (the seed ran nginx in docker-compose for this). It serves exactly one path with
 * GET and HEAD, streams the file, and refuses everything else.
 */

export interface KernelServerOptions {
  /** The .deb to serve. */
  file: string;
  /** The address the VM uses to reach this machine (default 10.0.2.2, VirtualBox NAT). */
  advertiseHost?: string;
  /** Where to listen; default: see defaultBindHost. */
  bindHost?: string;
  /** 0 picks a free port. */
  port?: number;
}

export interface KernelServer {
  url: string;
  port: number;
  bindHost: string;
  /** Requests answered so far (for progress and tests). */
  readonly requests: number;
  close(): Promise<void>;
}

/**
 * Where to listen for an advertised address. VirtualBox NAT maps 10.0.2.2 in the guest to the
 * host's 127.0.0.1, so loopback is enough and nothing is exposed to the (workshop) network.
 * Any other advertised address (e.g. 192.168.121.1, the libvirt management bridge) must be an
 * address of this machine, and listening only there keeps the file off other networks.
 */
export function defaultBindHost(advertiseHost: string): string {
  return advertiseHost === VIRTUALBOX_NAT_HOST ? "127.0.0.1" : advertiseHost;
}

/** The URL path the file is served under: its own name when that is plain, else kernel.deb. */
export function servedName(file: string): string {
  const name = basename(file);
  return /^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}\.deb$/.test(name) ? name : "kernel.deb";
}

export function checkAdvertiseHost(host: string): void {
  if (isIP(host) !== 4 && !/^[a-z0-9]([a-z0-9.-]{0,252}[a-z0-9])?$/i.test(host)) {
    throw new K8slabError(
      `--kernel-host ${JSON.stringify(host)} is not an IPv4 address or host name`,
      {
        exitCode: 2,
        hint: `VirtualBox NAT guests reach this machine at ${VIRTUALBOX_NAT_HOST} (the default); libvirt guests at their network's gateway, e.g. 192.168.121.1`,
      },
    );
  }
  if (/^127\./.test(host) || host === "localhost" || host === "0.0.0.0") {
    throw new K8slabError(`--kernel-host ${host} is the VM itself when seen from inside the VM`, {
      exitCode: 2,
      hint: `use ${VIRTUALBOX_NAT_HOST} for VirtualBox NAT (the default) or the host's address on the VM's network`,
    });
  }
}

export async function startKernelServer(options: KernelServerOptions): Promise<KernelServer> {
  const path = resolve(options.file);
  let size: number;
  try {
    const s = await stat(path);
    if (!s.isFile()) throw new Error("not a regular file");
    size = s.size;
  } catch (error) {
    throw new K8slabError(`cannot serve kernel ${options.file}: ${(error as Error).message}`, {
      exitCode: 2,
      hint: "give --kernel-deb the path of a raspberrypi-kernel_*.deb built with hypriot/rpi-kernel",
      cause: error,
    });
  }
  const advertiseHost = options.advertiseHost ?? VIRTUALBOX_NAT_HOST;
  checkAdvertiseHost(advertiseHost);
  const bindHost = options.bindHost ?? defaultBindHost(advertiseHost);
  const name = servedName(path);
  const urlPath = `/${name}`;
  let requests = 0;

  const server: Server = createServer((req, res) => {
    requests++;
    void answer(req, res, { path, urlPath, size, name });
  });
  // Idle keep-alive sockets must not hold close() open.
  server.keepAliveTimeout = 5_000;
  server.requestTimeout = 10 * 60_000;

  await new Promise<void>((resolveListen, rejectListen) => {
    const onError = (error: NodeJS.ErrnoException) => {
      server.off("listening", onListening);
      rejectListen(
        new K8slabError(
          `cannot serve the kernel on ${bindHost}:${options.port ?? DEFAULT_KERNEL_PORT}: ${error.code ?? error.message}`,
          {
            hint:
              error.code === "EADDRINUSE"
                ? "pick another port with --kernel-port (0 picks a free one)"
                : error.code === "EADDRNOTAVAIL"
                  ? `${bindHost} is not an address of this machine; set --kernel-bind to one that is`
                  : undefined,
            cause: error,
          },
        ),
      );
    };
    const onListening = () => {
      server.off("error", onError);
      resolveListen();
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen({ host: bindHost, port: options.port ?? DEFAULT_KERNEL_PORT, exclusive: true });
  });
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;

  let closed: Promise<void> | undefined;
  return {
    url: `http://${advertiseHost}:${port}${urlPath}`,
    port,
    bindHost,
    get requests() {
      return requests;
    },
    close() {
      closed ??= new Promise<void>((done) => {
        server.close(() => done());
        server.closeAllConnections();
      });
      return closed;
    },
  };
}

async function answer(
  req: IncomingMessage,
  res: ServerResponse,
  file: { path: string; urlPath: string; size: number; name: string },
): Promise<void> {
  const url = (req.url ?? "").split("?")[0];
  if (req.method !== "GET" && req.method !== "HEAD") {
    res.writeHead(405, { Allow: "GET, HEAD", "Content-Length": 0 }).end();
    return;
  }
  if (url !== file.urlPath) {
    res.writeHead(404, { "Content-Type": "text/plain", "Content-Length": 10 }).end("not found\n");
    return;
  }
  res.writeHead(200, {
    "Content-Type": "application/vnd.debian.binary-package",
    "Content-Length": file.size,
    "Content-Disposition": `attachment; filename="${file.name}"`,
  });
  if (req.method === "HEAD") {
    res.end();
    return;
  }
  try {
    await pipeline(createReadStream(file.path), res);
  } catch {
    // The client went away or the file vanished mid-way: the response is already cut short.
    res.destroy();
  }
}
