/**
 * A real Docker registry (Debian's docker-registry, distribution 2.8) for tests, inside a network
 * namespace of its own (test/helpers/netns.ts). One veth pair cables the test's side to that
 * network on a link-local /29 that exists only for this test, so the test process (and skopeo)
 * reach the registry directly and nothing else; attach() cables one more namespace of the test's.
 * Two registry processes serve one storage directory:
 *
 * - `host` (port 5000): TLS from a test CA and token authentication. Its token service runs in the
 *   test process, on our end of the veth, and signs JWTs (ES256, x5c chain) with a key whose
 *   certificate the test CA issued and the registry trusts (`auth.token.rootcertbundle`).
 *   Anonymous clients may pull everything but `private/*`; alice may pull everything; pusher may
 *   push.
 * - `basicHost` (port 5001): TLS and htpasswd (HTTP basic) authentication for alice.
 *
 * Everything started here is stopped by `destroy()` (and when the process exits).
 */
import { execFileSync } from "node:child_process";
import { createPrivateKey, randomBytes, X509Certificate } from "node:crypto";
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { createServer as createHttpsServer, type Server } from "node:https";
import { createServer as createTcpServer, connect, type AddressInfo, type Socket } from "node:net";
import { join } from "node:path";
import bcrypt from "bcryptjs";
import { execa } from "execa";
import { SignJWT } from "jose";
import { Agent, buildConnector, request, type Dispatcher } from "undici";
import { stringify } from "yaml";
import type { CertSpec } from "../../src/pki/cert-specs.js";
import {
  createCaCertificate,
  generateEcKeyPair,
  generateRsaKeyPair,
  issueCertificate,
  loadCertificateAuthority,
  validityFrom,
} from "../../src/pki/certs.js";
import { findTool, hostPath, tail } from "./host.js";
import { createNetnsNetwork, waitFor, type NetnsNetwork } from "./netns.js";

export const USERS = { alice: "alice-secret", pusher: "pusher-secret" } as const;
const SERVICE = "k8slab-test-registry";
const ISSUER = "k8slab-test-token-service";

export interface TokenRequest {
  user: string | undefined;
  scopes: string[];
}

export interface TestRegistry {
  /** host:port of the token-authenticated registry. */
  host: string;
  /** host:port of the htpasswd registry (same storage). */
  basicHost: string;
  /** The namespace end of the veth pair. */
  ip: string;
  /** host:port of the token service (on the test's end of the veth). */
  tokenHost: string;
  caPem: string;
  /** A temp directory for the test's own files (readable by skopeo). */
  root: string;
  /** A directory skopeo may write to. */
  scratch: string;
  tokenRequests: TokenRequest[];
  /** An undici dispatcher that trusts the test CA and connects only to `allow`ed hosts. */
  dispatcher(allow?: readonly string[]): GuardedDispatcher;
  /** Run skopeo (as nobody, so it leaves no cache behind) with the test CA and pusher's login. */
  skopeo(args: readonly string[]): Promise<string>;
  /** The registry's own copy of a blob. */
  storedBlob(digest: string): string;
  /** The registries' access and error log so far. */
  log(): Promise<string>;
  /**
   * Cable another network namespace (one the test made) to the registry's network: it gets the
   * address `ip` on a link reg0, and reaches the registry and its token service, until detach().
   */
  attach(netns: string): Promise<{ ip: string; detach(): Promise<void> }>;
  destroy(): Promise<void>;
}

export interface GuardedDispatcher extends Dispatcher {
  /** host:port of every connection the guard refused. */
  refused: string[];
}

async function requireTools(): Promise<void> {
  const tools = ["docker-registry", "skopeo", "setpriv"];
  const found = await Promise.all(tools.map(findTool));
  const missing = tools.filter((_, i) => found[i] === undefined);
  if (missing.length > 0) {
    throw new Error(`missing ${missing.join(", ")}: run scripts/install-test-deps.sh`);
  }
}

/**
 * A link-local /29 no interface of the host uses yet: .1 is ours, .2 the registry's, .3 for a
 * network namespace attached to it (attach()).
 */
function freeSubnet(): { local: string; remote: string; extra: string } {
  const used = execFileSync("ip", ["-o", "-4", "addr", "show"], {
    encoding: "utf8",
    timeout: 10_000,
  });
  for (let i = 0; i < 64; i++) {
    const n = (process.pid * 7 + i * 131) % 8_000;
    let third = 1 + Math.floor(n / 32);
    if (third === 169) third = 251; // keep clear of 169.254.169.254
    const base = `169.254.${third}.`;
    const first = (n % 32) * 8;
    const ips = [1, 2, 3].map((k) => `${base}${first + k}`);
    if (ips.every((ip) => !used.includes(`${ip}/`))) {
      return { local: ips[0]!, remote: ips[1]!, extra: ips[2]! };
    }
  }
  throw new Error("no free 169.254.x.y/29 for the test registry");
}

function serverSpec(name: string, ips: string[]): CertSpec {
  return {
    name,
    subject: { commonName: name, organizations: ["k8slab-test"] },
    sans: { dns: [], ips },
    keyUsage: ["digitalSignature", "keyEncipherment"],
    extKeyUsage: ["serverAuth"],
    issuer: "ca",
  };
}

/** Token requests name scopes as `repository:<name>:<action>[,<action>]`. */
function parseScope(scope: string): { type: string; name: string; actions: string[] } {
  const first = scope.indexOf(":");
  const last = scope.lastIndexOf(":");
  return {
    type: scope.slice(0, first),
    name: scope.slice(first + 1, last),
    actions: scope.slice(last + 1).split(","),
  };
}

function grant(user: string | undefined, name: string, wanted: string[]): string[] {
  if (user === "pusher") return wanted;
  const readable = user === "alice" || !name.startsWith("private/");
  return readable ? wanted.filter((a) => a === "pull") : [];
}

async function startTokenService(
  keyPem: string,
  certPem: string,
  tls: { key: string; cert: string },
  requests: TokenRequest[],
  address: string,
): Promise<{ server: Server; port: number }> {
  const key = createPrivateKey(keyPem);
  const x5c = [new X509Certificate(certPem).raw.toString("base64")];
  const server = createHttpsServer(tls, (req, res) => {
    void (async () => {
      const url = new URL(req.url ?? "/", "https://token.invalid");
      if (url.pathname !== "/token") {
        res.writeHead(404).end();
        return;
      }
      let user: string | undefined;
      const auth = req.headers.authorization;
      if (auth?.startsWith("Basic ")) {
        const [name = "", password] = Buffer.from(auth.slice(6), "base64").toString().split(":");
        if (USERS[name as keyof typeof USERS] !== password) {
          res.writeHead(401, { "content-type": "application/json" });
          res.end(JSON.stringify({ details: "wrong user name or password" }));
          return;
        }
        user = name;
      }
      const scopes = url.searchParams.getAll("scope");
      requests.push({ user, scopes });
      const access = scopes
        .map(parseScope)
        .map((s) => ({ type: s.type, name: s.name, actions: grant(user, s.name, s.actions) }))
        .filter((a) => a.actions.length > 0);
      const now = Math.floor(Date.now() / 1000);
      let jwt = new SignJWT({ access })
        .setProtectedHeader({ alg: "ES256", typ: "JWT", x5c })
        .setIssuer(ISSUER)
        .setAudience(url.searchParams.get("service") ?? "")
        .setIssuedAt(now)
        .setNotBefore(now - 10)
        .setExpirationTime(now + 300)
        .setJti(randomBytes(8).toString("hex"));
      if (user) jwt = jwt.setSubject(user);
      const token = await jwt.sign(key);
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ token, expires_in: 300 }));
    })().catch((error: unknown) => {
      res.writeHead(500).end(String(error));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, address, resolve));
  return { server, port: (server.address() as AddressInfo).port };
}

/**
 * A dispatcher that trusts the test CA and refuses to connect anywhere but the given
 * host:ports, so a test can never reach the internet (and can tell when code tried).
 */
export function guardedDispatcher(caPem: string, allow: readonly string[]): GuardedDispatcher {
  const tlsConnect = buildConnector({ ca: [caPem], timeout: 10_000 });
  const refused: string[] = [];
  const agent = new Agent({
    connect(options, callback) {
      const target = `${options.hostname}:${options.port || (options.protocol === "https:" ? 443 : 80)}`;
      if (!allow.includes(target)) {
        refused.push(target);
        callback(new Error(`the test refused a connection to ${target}`), null);
        return;
      }
      tlsConnect(options, callback);
    },
  });
  return Object.assign(agent, { refused });
}

export async function startTestRegistry(root: string): Promise<TestRegistry> {
  await requireTools();
  await chmod(root, 0o755);
  const veth = `k8sreg${process.pid % 1_000_000}`;
  const { local, remote, extra } = freeSubnet();
  const attachments = new Set<string>();
  let net: NetnsNetwork | undefined;
  let token: Server | undefined;

  const destroy = async (): Promise<void> => {
    for (const link of attachments) {
      await execa("ip", ["-n", net!.bridgeNs, "link", "del", link], {
        reject: false,
        timeout: 15_000,
      });
    }
    attachments.clear();
    token?.closeAllConnections();
    await new Promise<void>((resolve) => (token ? token.close(() => resolve()) : resolve()));
    token = undefined;
    // Stops the registries; deleting the bridge namespace deletes the veth pair with it.
    await net?.destroy();
  };

  try {
    // The registry's namespace on a bridge (createNetnsNetwork), and our veth into that bridge.
    net = await createNetnsNetwork({
      prefix: `k8slab-reg${process.pid}-`,
      prefixLength: 29,
      hosts: [{ name: "registry", ip: remote }],
    });
    const inBridge = (args: string[]) =>
      execa("ip", ["-n", net!.bridgeNs, ...args], { timeout: 15_000 });
    await execa(
      "ip",
      ["link", "add", veth, "type", "veth", "peer", "name", "host0", "netns", net.bridgeNs],
      { timeout: 15_000 },
    );
    await inBridge(["link", "set", "host0", "master", "br0"]);
    await inBridge(["link", "set", "host0", "up"]);
    await execa("ip", ["addr", "add", `${local}/29`, "dev", veth], { timeout: 15_000 });
    await execa("ip", ["link", "set", veth, "up"], { timeout: 15_000 });

    // A test CA, the registry's serving certificate, the token service's, and the token signer.
    const validity = validityFrom(new Date(), 2);
    const caKeys = await generateRsaKeyPair();
    const caPem = createCaCertificate(
      caKeys,
      { commonName: "k8slab-test-registry-ca", organizations: ["k8slab-test"] },
      validity,
    );
    const ca = loadCertificateAuthority(caPem, caKeys.privateKeyPem);
    const issue = (spec: CertSpec) => {
      const keys = generateEcKeyPair();
      return {
        key: keys.privateKeyPem,
        cert: issueCertificate(spec, keys.publicKeyPem, ca, validity),
      };
    };
    const registryTls = issue(serverSpec("registry", [remote, "127.0.0.1"]));
    const tokenTls = issue(serverSpec("token-service", [local]));
    const signer = issue(serverSpec("token-signer", []));

    const pki = join(root, "pki");
    await mkdir(join(root, "skopeo-certs"), { recursive: true });
    await mkdir(pki, { recursive: true, mode: 0o700 });
    await writeFile(join(root, "skopeo-certs", "ca.crt"), caPem);
    await writeFile(join(pki, "ca.pem"), caPem);
    await writeFile(join(pki, "registry.pem"), registryTls.cert);
    await writeFile(join(pki, "registry-key.pem"), registryTls.key, { mode: 0o600 });
    await writeFile(join(pki, "htpasswd"), `alice:${bcrypt.hashSync(USERS.alice, 4)}\n`);

    const tokenRequests: TokenRequest[] = [];
    // On our end of the veth: whoever reaches the registry reaches its token service.
    const tokenService = await startTokenService(
      signer.key,
      signer.cert,
      tokenTls,
      tokenRequests,
      local,
    );
    token = tokenService.server;

    const storage = join(root, "registry-storage");
    await mkdir(storage);
    const logFile = join(root, "registry.log");
    const config = (port: number, auth: Record<string, unknown>) => ({
      version: 0.1,
      log: { level: "info", formatter: "text" },
      storage: {
        filesystem: { rootdirectory: storage },
        maintenance: { uploadpurging: { enabled: false } },
      },
      http: {
        addr: `${remote}:${port}`,
        tls: { certificate: join(pki, "registry.pem"), key: join(pki, "registry-key.pem") },
      },
      auth,
      // Lets skopeo push a schema 1 manifest, for the test of a registry that offers only that.
      compatibility: { schema1: { enabled: true } },
    });
    const configs = {
      token: config(5000, {
        token: {
          realm: `https://${local}:${tokenService.port}/token`,
          service: SERVICE,
          issuer: ISSUER,
          rootcertbundle: join(pki, "ca.pem"),
        },
      }),
      basic: config(5001, { htpasswd: { realm: "k8slab-test", path: join(pki, "htpasswd") } }),
    };
    for (const [name, body] of Object.entries(configs)) {
      const file = join(pki, `${name}.yml`);
      await writeFile(file, stringify(body));
      net.start(net.host("registry").ns, "docker-registry", ["serve", file], logFile);
    }

    const host = `${remote}:5000`;
    const basicHost = `${remote}:5001`;
    const probe = guardedDispatcher(caPem, [host, basicHost]);
    try {
      for (const target of [host, basicHost]) {
        await waitFor(
          `the registry at ${target} to answer /v2/`,
          async () => {
            try {
              const res = await request(`https://${target}/v2/`, { dispatcher: probe });
              await res.body.dump();
              return res.statusCode === 401
                ? { done: true, value: undefined }
                : { done: false, detail: `HTTP ${res.statusCode}` };
            } catch (error) {
              return { done: false, detail: String(error) };
            }
          },
          { attempts: 80, intervalMs: 250, timeoutMs: 30_000 },
        );
      }
    } catch (error) {
      const log = await readFile(logFile, "utf8").catch(() => "");
      throw new Error(`${String(error)}\n${tail(log)}`, { cause: error });
    } finally {
      await probe.close();
    }

    const policy = join(root, "skopeo-policy.json");
    await writeFile(policy, JSON.stringify({ default: [{ type: "insecureAcceptAnything" }] }));
    const skopeoHome = join(root, "skopeo-home");
    await mkdir(skopeoHome);
    await chmod(skopeoHome, 0o777);

    const tokenHost = `${local}:${tokenService.port}`;
    return {
      host,
      basicHost,
      ip: remote,
      tokenHost,
      caPem,
      root,
      scratch: skopeoHome,
      tokenRequests,
      dispatcher: (allow = [host, basicHost, tokenHost]) => guardedDispatcher(caPem, allow),
      async skopeo(args) {
        const result = await execa(
          "setpriv",
          [
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "skopeo",
            `--policy=${policy}`,
            ...args,
          ],
          {
            reject: false,
            all: true,
            timeout: 60_000,
            cwd: root,
            env: { PATH: hostPath(), HOME: skopeoHome, XDG_RUNTIME_DIR: skopeoHome },
            extendEnv: false,
          },
        );
        if (result.exitCode !== 0) {
          throw new Error(
            `skopeo ${args.join(" ")} failed (${result.exitCode}):\n${tail(String(result.all))}`,
          );
        }
        return String(result.stdout);
      },
      storedBlob(digest) {
        const hex = digest.slice("sha256:".length);
        return join(
          storage,
          "docker",
          "registry",
          "v2",
          "blobs",
          "sha256",
          hex.slice(0, 2),
          hex,
          "data",
        );
      },
      log: () => readFile(logFile, "utf8"),
      async attach(netns) {
        const link = `k8sra${attachments.size}`;
        await execa(
          "ip",
          [
            "link",
            "add",
            link,
            "netns",
            net!.bridgeNs,
            "type",
            "veth",
            "peer",
            "name",
            "reg0",
            "netns",
            netns,
          ],
          { timeout: 15_000 },
        );
        attachments.add(link);
        await inBridge(["link", "set", link, "master", "br0"]);
        await inBridge(["link", "set", link, "up"]);
        const inNs = (args: string[]) => execa("ip", ["-n", netns, ...args], { timeout: 15_000 });
        await inNs(["addr", "add", `${extra}/29`, "dev", "reg0"]);
        await inNs(["link", "set", "reg0", "up"]);
        return {
          ip: extra,
          async detach() {
            // Deleting one end of the pair deletes both, and with it the namespace's route.
            await inBridge(["link", "del", link]);
            attachments.delete(link);
          },
        };
      },
      destroy,
    };
  } catch (error) {
    await destroy();
    throw error;
  }
}

/** skopeo flags to use the token registry as pusher, trusting the test CA: `--<prefix>cert-dir`... */
export function skopeoAuth(registry: TestRegistry, prefix: "src-" | "dest-"): string[] {
  return [
    `--${prefix}cert-dir=${join(registry.root, "skopeo-certs")}`,
    `--${prefix}creds=pusher:${USERS.pusher}`,
  ];
}

/**
 * A TCP relay on 127.0.0.1 to the registry that cuts the first connection that has carried more
 * than `afterBytes` towards the client, once: a network failure in the middle of a blob.
 */
export async function cuttingProxy(
  target: { host: string; port: number },
  afterBytes: number,
): Promise<{ port: number; cuts: () => number; close: () => Promise<void> }> {
  let cuts = 0;
  const sockets = new Set<Socket>();
  const server = createTcpServer((client) => {
    const upstream = connect(target.port, target.host);
    sockets.add(client).add(upstream);
    let down = 0;
    client.pipe(upstream);
    upstream.on("data", (chunk: Buffer) => {
      down += chunk.length;
      if (cuts === 0 && down > afterBytes) {
        cuts++;
        client.destroy();
        upstream.destroy();
        return;
      }
      client.write(chunk);
    });
    upstream.on("end", () => client.end());
    for (const s of [client, upstream]) {
      s.on("error", () => undefined);
      s.on("close", () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    cuts: () => cuts,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
