import { parse as parseAuthHeader } from "auth-header";
import { EnvHttpProxyAgent, interceptors, request, type Dispatcher } from "undici";
import { K8slabError } from "../errors.js";
import { credentialsFor, type Credentials, type DockerConfig } from "./docker-config.js";
import { apiHost, repositoryName, type Repository } from "./reference.js";

/** Registries answer this with a token, a user name or a redirect: never more hops. */
const MAX_REDIRECTS = 5;
/** A token lives this long when the token service says nothing (the spec's default). */
const DEFAULT_TOKEN_SECONDS = 60;

export interface RegistryClientOptions {
  dockerConfig: DockerConfig;
  /** undici dispatcher for every request; default: direct, or HTTP(S)_PROXY from the environment. */
  dispatcher?: Dispatcher;
  /** A request that receives nothing (headers or body) for this long fails. */
  stallMs: number;
  signal?: AbortSignal;
}

type Challenge = { scheme: "basic" } | { scheme: "bearer"; realm: string; service?: string };

export type Response = Dispatcher.ResponseData;

/** An HTTP failure worth another attempt (network, 5xx, 429). */
export class TransientError extends Error {
  override name = "TransientError";
}

function describeCredentials(config: DockerConfig, registry: string): string {
  return credentialsFor(config, registry)
    ? `the user name and password for ${registry} in ${config.path} were refused`
    : `${config.path} has no credentials for ${registry}`;
}

function loginHint(config: DockerConfig, registry: string): string {
  const helpers =
    config.helpers.length > 0
      ? ` (k8slab reads only "auths" there, not the credential helper ${config.helpers.join(", ")}; add an "auths" entry with "auth": base64 of user:password)`
      : "";
  return `log in with docker login ${registry} (it writes ${config.path})${helpers}, then try again`;
}

/**
 * The Docker Registry HTTP API v2 as a puller needs it: GETs that answer an authentication
 * challenge by themselves, with anonymous or Docker-config credentials for bearer tokens
 * (WWW-Authenticate: Bearer realm, service, scope) or basic authentication.
 */
export class RegistryClient {
  private readonly dispatcher: Dispatcher;
  private readonly owned: Dispatcher | undefined;
  private readonly challenges = new Map<string, Challenge>();
  private readonly tokens = new Map<string, { value: string; until: number }>();

  constructor(private readonly options: RegistryClientOptions) {
    this.owned = options.dispatcher ? undefined : new EnvHttpProxyAgent();
    const base = options.dispatcher ?? this.owned!;
    this.dispatcher = base.compose(interceptors.redirect({ maxRedirections: MAX_REDIRECTS }));
  }

  async close(): Promise<void> {
    await this.owned?.close();
  }

  /**
   * GET `/v2/<repository>/<path>`. The response's status is the caller's to judge, except 401,
   * which is answered here (once) and a K8slabError when the credentials do not do.
   */
  async get(repo: Repository, path: string, headers: Record<string, string>): Promise<Response> {
    const url = `https://${apiHost(repo.registry)}/v2/${repo.path}/${path}`;
    const scope = `repository:${repo.path}:pull`;
    const first = await this.send(url, headers, await this.authorization(repo.registry, scope));
    if (first.statusCode !== 401) return first;
    await first.body.dump();
    this.learnChallenge(repo.registry, first.headers["www-authenticate"]);
    this.tokens.delete(`${repo.registry} ${scope}`);
    const second = await this.send(url, headers, await this.authorization(repo.registry, scope));
    if (second.statusCode !== 401) return second;
    await second.body.dump();
    throw new K8slabError(
      `${repositoryName(repo)}: access denied: ${describeCredentials(this.options.dockerConfig, repo.registry)}`,
      { hint: loginHint(this.options.dockerConfig, repo.registry) },
    );
  }

  private async send(
    url: string,
    headers: Record<string, string>,
    authorization: string | undefined,
  ): Promise<Response> {
    try {
      return await request(url, {
        method: "GET",
        headers: { ...headers, ...(authorization ? { authorization } : {}) },
        dispatcher: this.dispatcher,
        signal: this.options.signal,
        headersTimeout: this.options.stallMs,
        bodyTimeout: this.options.stallMs,
      });
    } catch (error) {
      if (this.options.signal?.aborted) throw error;
      throw new TransientError(`GET ${url}: ${describe(error)}`, { cause: error });
    }
  }

  private learnChallenge(registry: string, header: string | string[] | undefined): void {
    const value = Array.isArray(header) ? header[0] : header;
    if (!value) {
      throw new K8slabError(`${registry} answered 401 without saying how to authenticate`);
    }
    const parsed = parseAuthHeader(value);
    const param = (name: string): string | undefined => {
      const v = parsed.params[name];
      return Array.isArray(v) ? v[0] : v;
    };
    const scheme = parsed.scheme.toLowerCase();
    const realm = param("realm");
    if (scheme === "bearer" && realm) {
      const service = param("service");
      this.challenges.set(registry, { scheme, realm, ...(service ? { service } : {}) });
    } else if (scheme === "basic") {
      this.challenges.set(registry, { scheme });
    } else {
      throw new K8slabError(`${registry} asks for authentication k8slab does not speak: ${value}`);
    }
  }

  /** The Authorization header for a registry and scope, once the registry has challenged us. */
  private async authorization(registry: string, scope: string): Promise<string | undefined> {
    const challenge = this.challenges.get(registry);
    if (challenge === undefined) return undefined;
    const credentials = credentialsFor(this.options.dockerConfig, registry);
    if (challenge.scheme === "basic") {
      if (!credentials) {
        throw new K8slabError(
          `${registry} asks for a user name and password: ${describeCredentials(this.options.dockerConfig, registry)}`,
          { hint: loginHint(this.options.dockerConfig, registry) },
        );
      }
      return `Basic ${basic(credentials)}`;
    }
    const key = `${registry} ${scope}`;
    const cached = this.tokens.get(key);
    if (cached && cached.until > Date.now()) return `Bearer ${cached.value}`;
    const token = await this.fetchToken(registry, challenge, scope, credentials);
    this.tokens.set(key, token);
    return `Bearer ${token.value}`;
  }

  private async fetchToken(
    registry: string,
    challenge: { realm: string; service?: string },
    scope: string,
    credentials: Credentials | undefined,
  ): Promise<{ value: string; until: number }> {
    let url: URL;
    try {
      url = new URL(challenge.realm);
    } catch (error) {
      throw new K8slabError(
        `${registry} names a token service that is not a URL: ${challenge.realm}`,
        {
          cause: error,
        },
      );
    }
    if (challenge.service) url.searchParams.set("service", challenge.service);
    url.searchParams.set("scope", scope);
    const response = await this.send(
      url.toString(),
      { accept: "application/json" },
      credentials ? `Basic ${basic(credentials)}` : undefined,
    );
    if (response.statusCode === 401 || response.statusCode === 403) {
      await response.body.dump();
      throw new K8slabError(
        `the token service of ${registry} (${url.origin}${url.pathname}) refused ${scope}: ${describeCredentials(this.options.dockerConfig, registry)}`,
        { hint: loginHint(this.options.dockerConfig, registry) },
      );
    }
    if (response.statusCode !== 200) {
      await response.body.dump();
      throw statusError(`token service ${url.origin}${url.pathname}`, response.statusCode);
    }
    const body = (await response.body.json()) as Record<string, unknown>;
    const value = typeof body.token === "string" ? body.token : body.access_token;
    if (typeof value !== "string" || value === "") {
      throw new K8slabError(`the token service of ${registry} answered without a token`);
    }
    const seconds = typeof body.expires_in === "number" ? body.expires_in : DEFAULT_TOKEN_SECONDS;
    // Renew ahead of time: a token must not expire between the check and the request.
    return { value, until: Date.now() + Math.max(0, seconds - 10) * 1000 };
  }
}

function basic(credentials: Credentials): string {
  return Buffer.from(`${credentials.username}:${credentials.password}`).toString("base64");
}

/** Network errors hide the reason in `cause` (ECONNREFUSED, ...). */
export function describe(error: unknown): string {
  const e = error as {
    message?: string;
    code?: string;
    cause?: { code?: string; message?: string };
  };
  const cause = e.cause?.code ?? e.cause?.message ?? e.code;
  return `${e.message ?? String(error)}${cause && !e.message?.includes(cause) ? ` (${cause})` : ""}`;
}

/** 429 and 5xx are worth another attempt; other statuses are final. */
export function statusError(what: string, status: number, hint?: string): Error {
  const message = `${what} answered HTTP ${status}`;
  return status === 429 || status >= 500
    ? new TransientError(message)
    : new K8slabError(message, hint ? { hint } : {});
}
