import type { LabPlan } from "../plan/plan.js";
import { PORTS } from "../plan/plan.js";
import type { Transport } from "./transport.js";

/** What one look at the cluster found: whether the goal is met, and what was seen. */
export interface CheckResult {
  ok: boolean;
  /** One line for people: what was seen, e.g. "2 of 3 etcd members healthy (minion2: refused)". */
  detail: string;
  /** The lab's nodes the goal waits on (another pass there may help; hints name them). */
  failing?: string[];
}

/** One look: a busy or emulated VM can take seconds to answer. */
const TIMEOUT_MS = 10_000;

function reason(error: unknown): string {
  const e = error as NodeJS.ErrnoException;
  if (e?.code === "ECONNREFUSED") return "connection refused";
  if (e?.code === "EHOSTUNREACH" || e?.code === "ENETUNREACH") return "unreachable";
  return (e?.message ?? String(error)).split("\n")[0]!.slice(0, 120);
}

export interface EtcdMember {
  name: string;
  peerURLs: string[];
  clientURLs: string[];
}

/** Answers of "false" a member gets before it counts as unhealthy, and the pause between. */
const HEALTH_ATTEMPTS = 3;
const HEALTH_RETRY_MS = 1_000;

/**
 * Every etcd member the lab declares answers /health and is listed as a member. Quorum alone (a
 * majority) is progress, not done: a member that never started would sink the next failure.
 */
export async function checkEtcd(
  plan: LabPlan,
  t: Transport,
): Promise<CheckResult & { members: EtcdMember[]; quorum: boolean }> {
  // One member at a time, and a member that answers "false" is asked again (bounded): etcd's
  // /health is a linearizable read with a 1 s deadline of its own, which on a slow VM misses now
  // and then (seen on emulated VMs: false on two members and true on the third, then the other
  // way round), and more often when every member is asked at once.
  const seen: { name: string; ip: string; healthy: boolean; why: string }[] = [];
  for (const m of plan.etcdMembers) {
    let result: (typeof seen)[number] = { name: m.name, ip: m.ip, healthy: false, why: "" };
    for (let attempt = 1; attempt <= HEALTH_ATTEMPTS; attempt++) {
      try {
        const res = await t.get(`https://${m.ip}:${PORTS.etcdClient}/health`, "etcd", TIMEOUT_MS);
        const healthy = res.status === 200 && /"health"\s*:\s*"?true/.test(res.body);
        result = {
          ...result,
          healthy,
          why: healthy ? "" : `HTTP ${res.status} ${res.body.trim().slice(0, 80)}`,
        };
        if (healthy) break;
      } catch (error) {
        // No answer at all is not the flapping above: no second try.
        result = { ...result, healthy: false, why: reason(error) };
        break;
      }
      if (attempt < HEALTH_ATTEMPTS) await new Promise((r) => setTimeout(r, HEALTH_RETRY_MS));
    }
    seen.push(result);
  }
  const healthy = seen.filter((s) => s.healthy);
  let members: EtcdMember[] = [];
  if (healthy.length > 0) {
    try {
      const res = await t.get(
        `https://${healthy[0]!.ip}:${PORTS.etcdClient}/v2/members`,
        "etcd",
        TIMEOUT_MS,
      );
      members = (JSON.parse(res.body) as { members?: EtcdMember[] }).members ?? [];
    } catch {
      members = [];
    }
  }
  const need = Math.floor(plan.etcdMembers.length / 2) + 1;
  const quorum = healthy.length >= need;
  const unhealthy = seen.filter((s) => !s.healthy);
  const unlisted = plan.etcdMembers.filter(
    (m) => healthy.length > 0 && !members.some((x) => x.name === m.name),
  );
  const failing = [...new Set([...unhealthy.map((s) => s.name), ...unlisted.map((m) => m.name)])];
  const problems = [
    ...unhealthy.map((s) => `${s.name}: ${s.why}`),
    ...unlisted.map((m) => `${m.name}: not a member`),
  ];
  const detail =
    `${healthy.length} of ${plan.etcdMembers.length} etcd members healthy` +
    (failing.length ? ` (${quorum ? "quorum" : `no quorum: it needs ${need}`})` : "") +
    (members.length ? `, ${members.length} listed` : "") +
    (problems.length ? `; ${problems.join(", ")}` : "");
  return { ok: failing.length === 0, detail, members, quorum, failing };
}

/** flannel's network config is in etcd's v2 keyspace and matches the lab. */
export async function checkFlannelNetwork(plan: LabPlan, t: Transport): Promise<CheckResult> {
  const key = `${plan.paths.flannelEtcdPrefix}/config`;
  const errors: string[] = [];
  for (const m of plan.etcdMembers) {
    try {
      const res = await t.get(
        `https://${m.ip}:${PORTS.etcdClient}/v2/keys${key}`,
        "etcd",
        TIMEOUT_MS,
      );
      if (res.status === 404) {
        return { ok: false, detail: `${key} is not in etcd yet`, failing: [plan.master.name] };
      }
      const value = (JSON.parse(res.body) as { node?: { value?: string } }).node?.value ?? "";
      const network = (JSON.parse(value) as { Network?: string }).Network;
      return network === plan.lab.cluster.podNetwork
        ? { ok: true, detail: `${key} holds ${value}` }
        : {
            ok: false,
            detail: `${key} holds network ${network}, not ${plan.lab.cluster.podNetwork}`,
          };
    } catch (error) {
      errors.push(`${m.name}: ${reason(error)}`);
    }
  }
  return {
    ok: false,
    detail: `cannot read ${key} (${errors.join(", ")})`,
    failing: [plan.master.name],
  };
}

export async function checkApiServer(plan: LabPlan, t: Transport): Promise<CheckResult> {
  try {
    const res = await t.get(`${plan.apiServerUrl}/healthz`, "admin", TIMEOUT_MS);
    if (res.status === 200 && res.body.trim() === "ok") {
      return { ok: true, detail: "API server /healthz: ok" };
    }
    // A failing /healthz lists every check, "[+]ping ok" first: what fails is on the [-] lines.
    const failing = res.body
      .split("\n")
      .filter((l) => l.startsWith("[-]"))
      .map((l) => l.slice(3).replace(/ failed: reason withheld$/, " failed"));
    const said = failing.length ? failing.join(", ") : res.body.trim().slice(0, 100);
    return {
      ok: false,
      detail: `API server /healthz: HTTP ${res.status} ${said}`,
      failing: [plan.master.name],
    };
  } catch (error) {
    return { ok: false, detail: `API server: ${reason(error)}`, failing: [plan.master.name] };
  }
}

interface NodeList {
  items?: {
    metadata: { name: string };
    status?: { conditions?: { type: string; status: string; message?: string }[] };
  }[];
}

/** Every node of the lab is registered and Ready (nodes that are not the lab's do not count). */
export async function checkNodesReady(
  plan: LabPlan,
  t: Transport,
): Promise<CheckResult & { ready: string[] }> {
  const expected = plan.nodes.map((n) => n.name);
  try {
    const res = await t.get(`${plan.apiServerUrl}/api/v1/nodes`, "admin", TIMEOUT_MS);
    if (res.status !== 200)
      return { ok: false, ready: [], detail: `GET /api/v1/nodes: HTTP ${res.status}` };
    const items = (JSON.parse(res.body) as NodeList).items ?? [];
    const readyOf = (name: string) =>
      items
        .find((n) => n.metadata.name === name)
        ?.status?.conditions?.find((c) => c.type === "Ready");
    const ready = expected.filter((n) => readyOf(n)?.status === "True");
    const waiting = expected.filter((n) => !ready.includes(n));
    const why = (n: string): string => {
      if (!items.some((i) => i.metadata.name === n)) return `${n} (not registered)`;
      const message = readyOf(n)?.message?.trim().slice(0, 120);
      return `${n} (registered, not Ready${message ? `: ${message}` : ""})`;
    };
    return {
      ok: waiting.length === 0,
      ready,
      failing: waiting,
      detail:
        waiting.length === 0
          ? `all ${expected.length} nodes Ready`
          : `${ready.length} of ${expected.length} nodes Ready; waiting for ${waiting.map(why).join(", ")}`,
    };
  } catch (error) {
    return { ok: false, ready: [], detail: `nodes: ${reason(error)}` };
  }
}

const ADDON_APPS: Record<string, string> = {
  "kube-dns": "kube-dns",
  dashboard: "kubernetes-dashboard",
};

interface PodList {
  items?: {
    metadata: { name: string; labels?: Record<string, string> };
    status?: { phase?: string; containerStatuses?: { ready: boolean }[] };
  }[];
}

export async function checkAddons(plan: LabPlan, t: Transport): Promise<CheckResult> {
  if (plan.lab.addons.length === 0) return { ok: true, detail: "no addons" };
  try {
    const res = await t.get(
      `${plan.apiServerUrl}/api/v1/namespaces/kube-system/pods`,
      "admin",
      TIMEOUT_MS,
    );
    if (res.status !== 200)
      return { ok: false, detail: `GET kube-system pods: HTTP ${res.status}` };
    const pods = (JSON.parse(res.body) as PodList).items ?? [];
    const states = plan.lab.addons.map((addon) => {
      const mine = pods.filter((p) => p.metadata.labels?.["k8s-app"] === ADDON_APPS[addon]);
      const running = mine.some(
        (p) =>
          p.status?.phase === "Running" && (p.status.containerStatuses ?? []).every((c) => c.ready),
      );
      return { addon, running, state: mine[0]?.status?.phase ?? "no pod" };
    });
    const waiting = states.filter((s) => !s.running);
    return {
      ok: waiting.length === 0,
      detail:
        waiting.length === 0
          ? `addons running: ${plan.lab.addons.join(", ")}`
          : `waiting for ${waiting.map((s) => `${s.addon} (${s.state})`).join(", ")}`,
    };
  } catch (error) {
    return { ok: false, detail: `addons: ${reason(error)}` };
  }
}
