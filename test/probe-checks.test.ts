import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import type { TLSSocket } from "node:tls";
import { createServer, type Server } from "node:https";
import { join } from "node:path";
import { validateLabText } from "../src/lab/load.js";
import { ensurePki } from "../src/pki/index.js";
import { pkiTopology, planLab, type LabPlan } from "../src/plan/plan.js";
import { checkAddons, checkApiServer, checkEtcd, checkNodesReady } from "../src/probe/checks.js";
import { HttpsTransport, type Transport } from "../src/probe/transport.js";
import { editedLab } from "./helpers/labs.js";
import { useTmpDirs } from "./helpers/tmp.js";

/**
 * The API server checks against a stand-in API server on loopback that serves with the lab's
 * own apiserver certificate and demands a client certificate from the lab's CA, as the real one
 * does. The lab's master sits at 127.0.0.10 so that every byte stays on this machine.
 */
const tmp = useTmpDirs();
let plan: LabPlan;
let server: Server;
let pkiDir: string;
let labDir: string;
const answers = new Map<string, { status: number; body: unknown }>();
const clients: string[] = [];

beforeAll(async () => {
  const text = editedLab("three-node", [
    [["network", "hostOnly"], "127.0.0.0/24"],
    [["nodes", 0, "ip"], "127.0.0.10"],
    [["nodes", 1, "ip"], "127.0.0.11"],
    [["nodes", 2, "ip"], "127.0.0.12"],
  ]);
  const { lab, problems } = validateLabText("loopback.yaml", text);
  expect(problems.filter((p) => p.severity === "error")).toEqual([]);
  plan = planLab(lab!);
  labDir = await mkdtemp(join(tmpdir(), "k8slab-probe-"));
  await ensurePki(labDir, pkiTopology(plan));
  pkiDir = join(labDir, "pki");
  const file = (name: string) => readFile(join(pkiDir, name));
  server = createServer(
    {
      key: await file("apiserver-key.pem"),
      cert: await file("apiserver.pem"),
      ca: await file("ca.pem"),
      requestCert: true,
      rejectUnauthorized: true,
    },
    (req, res) => {
      const peer = (req.socket as TLSSocket).getPeerCertificate();
      clients.push(`${peer.subject.O ?? ""}/${peer.subject.CN}`);
      const answer = answers.get(req.url ?? "") ?? { status: 404, body: "not found" };
      res
        .writeHead(answer.status)
        .end(typeof answer.body === "string" ? answer.body : JSON.stringify(answer.body));
    },
  );
  await new Promise<void>((resolve) => server.listen(6443, "127.0.0.10", resolve));
});

afterAll(async () => {
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve));
  if (labDir) await rm(labDir, { recursive: true, force: true });
});

const node = (name: string, ready: boolean) => ({
  metadata: { name },
  status: { conditions: [{ type: "Ready", status: ready ? "True" : "False" }] },
});

describe("API server checks over the lab's TLS", () => {
  it("healthz: ok only for an answer of ok, with the admin certificate", async () => {
    const t = new HttpsTransport(pkiDir);
    // What a v1.9 API server answers while it starts: every check, the failing ones as [-].
    const starting = [
      "[+]ping ok",
      "[+]etcd ok",
      "[+]poststarthook/generic-apiserver-start-informers ok",
      "[-]poststarthook/rbac/bootstrap-roles failed: reason withheld",
      "[+]poststarthook/ca-registration ok",
      "[-]autoregister-completion failed: reason withheld",
      "healthz check failed",
    ].join("\n");
    answers.set("/healthz", { status: 500, body: starting });
    expect(await checkApiServer(plan, t)).toEqual({
      ok: false,
      detail:
        "API server /healthz: HTTP 500 poststarthook/rbac/bootstrap-roles failed, autoregister-completion failed",
      failing: ["master"],
    });
    answers.set("/healthz", { status: 200, body: "ok" });
    expect((await checkApiServer(plan, t)).ok).toBe(true);
    expect(clients.at(-1)).toBe("system:masters/admin");
  });

  it("nodes: every node of the lab Ready; says which are missing or not Ready", async () => {
    const t = new HttpsTransport(pkiDir);
    answers.set("/api/v1/nodes", {
      status: 200,
      body: { items: [node("master", true), node("minion1", true)] },
    });
    const two = await checkNodesReady(plan, t);
    expect(two.ok).toBe(false);
    expect(two.detail).toBe("2 of 3 nodes Ready; waiting for minion2 (not registered)");
    answers.set("/api/v1/nodes", {
      status: 200,
      body: { items: [node("master", true), node("minion1", true), node("minion2", false)] },
    });
    expect((await checkNodesReady(plan, t)).detail).toMatch(/minion2 \(registered, not Ready\)/);
    // A Ready node that is not the lab's does not stand in for a missing one.
    answers.set("/api/v1/nodes", {
      status: 200,
      body: { items: [node("minion1", true), node("minion2", true), node("other", true)] },
    });
    expect((await checkNodesReady(plan, t)).detail).toBe(
      "2 of 3 nodes Ready; waiting for master (not registered)",
    );
    answers.set("/api/v1/nodes", {
      status: 200,
      body: { items: [node("master", true), node("minion1", true), node("minion2", true)] },
    });
    expect(await checkNodesReady(plan, t)).toMatchObject({
      ok: true,
      ready: ["master", "minion1", "minion2"],
    });
  });

  it("addons: kube-dns and the dashboard running with every container ready", async () => {
    const t = new HttpsTransport(pkiDir);
    const pod = (app: string, phase: string, ready: boolean) => ({
      metadata: { name: `${app}-x`, labels: { "k8s-app": app } },
      status: { phase, containerStatuses: [{ ready }] },
    });
    const url = "/api/v1/namespaces/kube-system/pods";
    answers.set(url, { status: 200, body: { items: [pod("kube-dns", "Running", false)] } });
    expect((await checkAddons(plan, t)).detail).toBe(
      "waiting for kube-dns (Running), dashboard (no pod)",
    );
    answers.set(url, {
      status: 200,
      body: {
        items: [pod("kube-dns", "Running", true), pod("kubernetes-dashboard", "Running", true)],
      },
    });
    expect(await checkAddons(plan, t)).toEqual({
      ok: true,
      detail: "addons running: kube-dns, dashboard",
    });
  });

  it("a client without the lab's certificate gets nothing", async () => {
    const other = await tmp();
    await ensurePki(other, { ...pkiTopology(plan), labName: "other" });
    const stranger = new HttpsTransport(join(other, "pki"));
    const result = await checkApiServer(plan, stranger);
    expect(result.ok).toBe(false);
  });
});

describe("etcd's /health, asked one member at a time", () => {
  /** A transport that answers /health from a script per member, and /v2/members with all three. */
  function scripted(health: Record<string, boolean[]>): Transport & { asked: string[] } {
    const asked: string[] = [];
    return {
      kind: "https",
      asked,
      async get(url) {
        const { hostname, pathname } = new URL(url);
        asked.push(`${hostname}${pathname}`);
        if (pathname === "/v2/members") {
          const members = plan.etcdMembers.map((m) => ({
            name: m.name,
            peerURLs: [`https://${m.ip}:2380`],
            clientURLs: [`https://${m.ip}:2379`],
          }));
          return { status: 200, body: JSON.stringify({ members }) };
        }
        const answers = health[hostname]!;
        const healthy = answers.length > 1 ? answers.shift()! : answers[0]!;
        return healthy
          ? { status: 200, body: '{"health":"true"}' }
          : { status: 503, body: '{"health":"false"}' };
      },
    };
  }

  it("a member whose /health misses once (a slow read) is healthy; one that says false three times is not", async () => {
    const [a, b, c] = plan.etcdMembers.map((m) => m.ip);
    const t = scripted({ [a!]: [false, true], [b!]: [true], [c!]: [false] });
    const result = await checkEtcd(plan, t);
    expect(result.ok).toBe(false);
    expect(result.quorum).toBe(true);
    expect(result.failing).toEqual([plan.etcdMembers[2]!.name]);
    expect(result.detail).toMatch(/^2 of 3 etcd members healthy/);
    // In order, one at a time: a twice, b once, c three times, then the member list.
    expect(t.asked).toEqual([
      `${a}/health`,
      `${a}/health`,
      `${b}/health`,
      `${c}/health`,
      `${c}/health`,
      `${c}/health`,
      `${a}/v2/members`,
    ]);
  });
});
