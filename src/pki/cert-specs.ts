import { isIPv4 } from "node:net";
import type { PkiTopology } from "./topology.js";
import { etcdMembers, masterNode } from "./topology.js";

export type KeyUsage = "digitalSignature" | "keyEncipherment" | "keyCertSign" | "cRLSign";
export type ExtKeyUsage = "serverAuth" | "clientAuth";

export interface Subject {
  commonName: string;
  organizations: readonly string[];
}

export interface SubjectAltNames {
  dns: readonly string[];
  ips: readonly string[];
}

/** Everything that decides what a leaf certificate says; recorded in manifest.json. */
export interface CertSpec {
  /** File stem: `<name>.pem` and `<name>-key.pem`. */
  name: string;
  /** The node this certificate belongs to, for per-node certificates. */
  node?: string;
  subject: Subject;
  sans: SubjectAltNames;
  keyUsage: readonly KeyUsage[];
  extKeyUsage: readonly ExtKeyUsage[];
  /** The CA that signs it: etcd's own (etcd's servers, peers and clients), else the lab's. */
  issuer: CaName;
}

/** The lab's CA (Kubernetes), and etcd's: only certificates etcd's CA signed open etcd. */
export const CA_NAME = "ca";
export const ETCD_CA_NAME = "etcd-ca";
export type CaName = typeof CA_NAME | typeof ETCD_CA_NAME;

const LEAF_KEY_USAGE: readonly KeyUsage[] = ["digitalSignature", "keyEncipherment"];
export const CA_KEY_USAGE: readonly KeyUsage[] = ["digitalSignature", "keyCertSign", "cRLSign"];

type Profile = "server" | "client" | "server-and-client";

const EKU: Record<Profile, readonly ExtKeyUsage[]> = {
  server: ["serverAuth"],
  client: ["clientAuth"],
  "server-and-client": ["serverAuth", "clientAuth"],
};

function leaf(
  name: string,
  profile: Profile,
  subject: { cn: string; o?: readonly string[] },
  sans: SubjectAltNames = { dns: [], ips: [] },
  node?: string,
  issuer: CaName = CA_NAME,
): CertSpec {
  return {
    name,
    ...(node === undefined ? {} : { node }),
    subject: { commonName: subject.cn, organizations: subject.o ?? [] },
    sans,
    keyUsage: LEAF_KEY_USAGE,
    extKeyUsage: EKU[profile],
    issuer,
  };
}

export function caCommonName(topology: PkiTopology, ca: CaName = CA_NAME): string {
  return `${topology.labName}-${ca}`;
}

/** The service-account signing key pair: `service-account.pem` (public) + `-key.pem`. */
export const SERVICE_ACCOUNT = "service-account";

/** Every leaf certificate the topology needs, in a stable order. */
export function planCertificates(topology: PkiTopology): CertSpec[] {
  const master = masterNode(topology);
  const specs: CertSpec[] = [];

  for (const node of etcdMembers(topology)) {
    const sans = { dns: [node.name, "localhost"], ips: [node.ip, "127.0.0.1"] };
    // Also clientAuth: etcd 3.4 dials its own client port (grpc-gateway) with its serving
    // certificate, which --client-cert-auth rejects otherwise ("incompatible key usage").
    for (const kind of ["server", "peer"]) {
      specs.push(
        leaf(
          `etcd-${kind}-${node.name}`,
          "server-and-client",
          { cn: node.name },
          sans,
          node.name,
          ETCD_CA_NAME,
        ),
      );
    }
  }
  // etcd trusts its own CA only: these two clients (the API server and flannel) and its members,
  // never a kubelet's or kube-proxy's certificate.
  const etcdClient = (name: string, cn: string) =>
    leaf(name, "client", { cn }, undefined, undefined, ETCD_CA_NAME);
  specs.push(etcdClient("etcd-client-apiserver", "kube-apiserver-etcd-client"));
  specs.push(etcdClient("etcd-client-flannel", "flannel"));

  const domain = topology.clusterDomain;
  // The address kubeconfigs use must be in the certificate too, should it not be the master's IP.
  const urlHost = new URL(topology.apiServerUrl).hostname;
  const urlIsIp = isIPv4(urlHost);
  const apiIps = unique([
    master.ip,
    topology.apiServiceIp,
    "127.0.0.1",
    ...(urlIsIp ? [urlHost] : []),
  ]);
  const apiNames = unique([
    master.name,
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    `kubernetes.default.svc.${domain}`,
    ...(urlIsIp ? [] : [urlHost]),
  ]);
  specs.push(
    leaf(
      "apiserver",
      "server",
      { cn: "kube-apiserver" },
      { dns: apiNames, ips: apiIps },
      master.name,
    ),
  );
  specs.push(
    leaf("apiserver-kubelet-client", "client", {
      cn: "kube-apiserver-kubelet-client",
      o: ["system:masters"],
    }),
  );

  for (const node of topology.nodes) {
    specs.push(
      leaf(
        `kubelet-client-${node.name}`,
        "client",
        { cn: `system:node:${node.name}`, o: ["system:nodes"] },
        undefined,
        node.name,
      ),
    );
    specs.push(
      leaf(
        `kubelet-server-${node.name}`,
        "server",
        { cn: node.name },
        { dns: [node.name], ips: [node.ip] },
        node.name,
      ),
    );
  }

  specs.push(leaf("kube-proxy", "client", { cn: "system:kube-proxy" }));
  specs.push(leaf("kube-controller-manager", "client", { cn: "system:kube-controller-manager" }));
  specs.push(leaf("kube-scheduler", "client", { cn: "system:kube-scheduler" }));
  specs.push(leaf("admin", "client", { cn: "admin", o: ["system:masters"] }));
  return specs;
}

function unique(values: readonly string[]): string[] {
  return [...new Set(values)];
}

function sorted(values: readonly string[]): string[] {
  return [...values].sort();
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  const x = sorted(a);
  const y = sorted(b);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

export function formatSubject(subject: Subject): string {
  return [...subject.organizations.map((o) => `O=${o}`), `CN=${subject.commonName}`].join(", ");
}

function sanList(sans: SubjectAltNames): string[] {
  return [...sans.ips, ...sans.dns];
}

function describeChange(what: string, before: readonly string[], after: readonly string[]): string {
  const removed = before.filter((v) => !after.includes(v));
  const added = after.filter((v) => !before.includes(v));
  const show = (values: string[]): string => (values.length === 0 ? "(none)" : values.join(", "));
  return `${what} changed: ${show(removed)} -> ${show(added)}`;
}

/** The parts of a spec that end up in the certificate. */
export type IssuedSpec = Pick<CertSpec, "subject" | "sans" | "keyUsage" | "extKeyUsage">;

/** Human reasons why `wanted` differs from what was issued; empty when they agree. */
export function specDifferences(issued: IssuedSpec, wanted: IssuedSpec): string[] {
  const reasons: string[] = [];
  const issuedSubject = formatSubject(issued.subject);
  const wantedSubject = formatSubject(wanted.subject);
  if (issuedSubject !== wantedSubject) {
    reasons.push(`subject changed: ${issuedSubject} -> ${wantedSubject}`);
  }
  if (!sameSet(sanList(issued.sans), sanList(wanted.sans))) {
    reasons.push(describeChange("SANs", sanList(issued.sans), sanList(wanted.sans)));
  }
  if (!sameSet(issued.keyUsage, wanted.keyUsage)) {
    reasons.push(describeChange("key usage", issued.keyUsage, wanted.keyUsage));
  }
  if (!sameSet(issued.extKeyUsage, wanted.extKeyUsage)) {
    reasons.push(describeChange("extended key usage", issued.extKeyUsage, wanted.extKeyUsage));
  }
  return reasons;
}
