import { X509Certificate } from "node:crypto";
import forge from "node-forge";
import type { ExtKeyUsage, IssuedSpec, KeyUsage } from "./cert-specs.js";

/** forge's parsers for the parts of a certificate; its certificateFromAsn1 refuses EC keys. */
const PKI = forge.pki as unknown as {
  RDNAttributesAsArray(rdn: forge.asn1.Asn1): { shortName?: string; value: string }[];
  certificateExtensionsFromAsn1(exts: forge.asn1.Asn1): Record<string, unknown>[];
};

const KEY_USAGES: readonly KeyUsage[] = [
  "digitalSignature",
  "keyEncipherment",
  "keyCertSign",
  "cRLSign",
];
const EXT_KEY_USAGES: readonly ExtKeyUsage[] = ["serverAuth", "clientAuth"];

/**
 * What a certificate says, in the terms of a CertSpec (subject, SANs, key usages), read from
 * the certificate itself: the manifest can be rebuilt from certificates when it is lost.
 */
export function issuedSpecOf(certPem: string): IssuedSpec {
  const der = new X509Certificate(certPem).raw;
  const cert = forge.asn1.fromDer(forge.util.createBuffer(der.toString("binary")));
  const tbs = (cert.value as forge.asn1.Asn1[])[0]!.value as forge.asn1.Asn1[];
  const contextTag = (n: number) => (a: forge.asn1.Asn1) =>
    a.tagClass === forge.asn1.Class.CONTEXT_SPECIFIC && a.type === n;
  // TBSCertificate: [0] version (optional), serial, signature, issuer, validity, subject, ...
  const subjectAt = tbs.findIndex(contextTag(0)) === 0 ? 5 : 4;
  const subject = PKI.RDNAttributesAsArray(tbs[subjectAt]!);
  const extensionsField = tbs.find(contextTag(3));
  const extensions = extensionsField ? PKI.certificateExtensionsFromAsn1(extensionsField) : [];
  const extension = (name: string) => extensions.find((e) => e.name === name) ?? {};
  const altNames = (extension("subjectAltName").altNames ?? []) as {
    type: number;
    value?: string;
    ip?: string;
  }[];
  return {
    subject: {
      commonName: subject.find((a) => a.shortName === "CN")?.value ?? "",
      organizations: subject.filter((a) => a.shortName === "O").map((a) => a.value),
    },
    sans: {
      dns: altNames.filter((n) => n.type === 2).map((n) => n.value ?? ""),
      ips: altNames.filter((n) => n.type === 7).map((n) => n.ip ?? ""),
    },
    keyUsage: KEY_USAGES.filter((u) => extension("keyUsage")[u] === true),
    extKeyUsage: EXT_KEY_USAGES.filter((u) => extension("extKeyUsage")[u] === true),
  };
}
