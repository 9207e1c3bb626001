import {
  createPrivateKey,
  createPublicKey,
  createHash,
  generateKeyPair,
  generateKeyPairSync,
  randomBytes,
  sign,
  X509Certificate,
  type KeyObject,
} from "node:crypto";
import forge from "node-forge";
import type { CertSpec, ExtKeyUsage, KeyUsage, Subject } from "./cert-specs.js";
import { CA_KEY_USAGE } from "./cert-specs.js";

/** The CA and the service-account key: RSA, which every consumer of the k8s 1.9 era reads. */
export const RSA_BITS = 2048;
/**
 * Every other certificate gets an ECDSA P-256 key: Go's TLS (etcd 3.1+, Kubernetes 1.9, kubectl)
 * reads them, and one takes microseconds to generate where RSA 2048 takes a tenth of a second,
 * which keeps a whole lab's PKI well under a second.
 */
export const EC_CURVE = "prime256v1";
/** notBefore lies this far in the past: VM clocks lag after halt/resume. */
export const BACKDATE_MS = 5 * 60 * 1000;
const DAY_MS = 24 * 60 * 60 * 1000;

export interface KeyPairPem {
  /** PKCS#1 ("RSA PRIVATE KEY") or SEC 1 ("EC PRIVATE KEY"), which every Go release reads. */
  privateKeyPem: string;
  /** SubjectPublicKeyInfo ("PUBLIC KEY"). */
  publicKeyPem: string;
}

/** The lab CA, ready to sign. */
export interface CertificateAuthority {
  certPem: string;
  cert: forge.pki.Certificate;
  key: KeyObject;
  x509: X509Certificate;
}

export interface Validity {
  notBefore: Date;
  notAfter: Date;
}

/** RSA key generation runs on libuv's thread pool, so several calls run in parallel. */
export function generateRsaKeyPair(): Promise<KeyPairPem> {
  return new Promise((resolve, reject) => {
    generateKeyPair(
      "rsa",
      {
        modulusLength: RSA_BITS,
        publicKeyEncoding: { type: "spki", format: "pem" },
        privateKeyEncoding: { type: "pkcs1", format: "pem" },
      },
      (error, publicKeyPem, privateKeyPem) => {
        if (error) reject(error);
        else resolve({ privateKeyPem: lf(privateKeyPem), publicKeyPem: lf(publicKeyPem) });
      },
    );
  });
}

/** An ECDSA P-256 key pair for a leaf certificate. */
export function generateEcKeyPair(): KeyPairPem {
  const { publicKey, privateKey } = generateKeyPairSync("ec", {
    namedCurve: EC_CURVE,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "sec1", format: "pem" },
  });
  return { privateKeyPem: lf(privateKey), publicKeyPem: lf(publicKey) };
}

export function lf(text: string): string {
  return text.replace(/\r\n/g, "\n");
}

/** X.509 times have whole seconds; truncating keeps manifest and certificate in agreement. */
function wholeSeconds(ms: number): Date {
  return new Date(Math.floor(ms / 1000) * 1000);
}

export function validityFrom(now: Date, days: number, notAfterLimit?: Date): Validity {
  const notAfter = wholeSeconds(now.getTime() + days * DAY_MS);
  return {
    notBefore: wholeSeconds(now.getTime() - BACKDATE_MS),
    notAfter: notAfterLimit !== undefined && notAfterLimit < notAfter ? notAfterLimit : notAfter,
  };
}

/** 126 random bits in 16 bytes: top bit clear (positive), second bit set (minimal DER). */
export function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x40;
  return bytes.toString("hex");
}

function subjectAttributes(subject: Subject): forge.pki.CertificateField[] {
  return [
    ...subject.organizations.map((value) => ({ shortName: "O", value })),
    { shortName: "CN", value: subject.commonName },
  ];
}

function keyUsageExtension(usages: readonly KeyUsage[]): Record<string, unknown> {
  return {
    name: "keyUsage",
    critical: true,
    ...Object.fromEntries(usages.map((u) => [u, true])),
  };
}

function extKeyUsageExtension(usages: readonly ExtKeyUsage[]): Record<string, unknown> {
  return { name: "extKeyUsage", ...Object.fromEntries(usages.map((u) => [u, true])) };
}

const TBS = forge.pki as unknown as {
  getTBSCertificate(cert: forge.pki.Certificate): forge.asn1.Asn1;
};

/**
 * forge assembles the certificate; the RSA PKCS#1 v1.5 / SHA-256 signature over its
 * TBSCertificate is computed by Node's OpenSSL. That signature scheme is deterministic, so the
 * bytes equal what `cert.sign(key, sha256)` in forge would give, about a hundred times faster.
 */
function signCertificate(
  cert: forge.pki.Certificate,
  key: KeyObject,
  subjectPublicKeyInfo?: forge.asn1.Asn1,
): string {
  cert.signatureOid = forge.pki.oids.sha256WithRSAEncryption!;
  cert.siginfo.algorithmOid = cert.signatureOid;
  cert.tbsCertificate = TBS.getTBSCertificate(cert);
  if (subjectPublicKeyInfo) {
    // TBSCertificate: version, serial, signature, issuer, validity, subject, subjectPublicKeyInfo.
    (cert.tbsCertificate.value as forge.asn1.Asn1[])[6] = subjectPublicKeyInfo;
  }
  const tbsDer = Buffer.from(forge.asn1.toDer(cert.tbsCertificate).getBytes(), "binary");
  cert.signature = sign("sha256", tbsDer, key).toString("binary");
  return lf(forge.pki.certificateToPem(cert));
}

/** forge only models RSA keys: an EC key is put into the certificate's ASN.1 by hand. */
function isRsa(publicKeyPem: string): boolean {
  return createPublicKey(publicKeyPem).asymmetricKeyType === "rsa";
}

function spkiAsn1(publicKeyPem: string): forge.asn1.Asn1 {
  const der = createPublicKey(publicKeyPem).export({ type: "spki", format: "der" });
  return forge.asn1.fromDer(forge.util.createBuffer(der.toString("binary")));
}

/** RFC 5280 method 1: SHA-1 of the subjectPublicKey bits. */
function keyIdentifierOf(spki: forge.asn1.Asn1): string {
  const bits = (spki.value as forge.asn1.Asn1[])[1]!.value as string;
  return createHash("sha1")
    .update(Buffer.from(bits.slice(1), "binary"))
    .digest("binary");
}

function newCertificate(
  publicKeyPem: string,
  validity: Validity,
  placeholder?: forge.pki.PublicKey,
): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = isRsa(publicKeyPem) ? forge.pki.publicKeyFromPem(publicKeyPem) : placeholder!;
  cert.serialNumber = randomSerial();
  cert.validity.notBefore = validity.notBefore;
  cert.validity.notAfter = validity.notAfter;
  return cert;
}

export function createCaCertificate(
  keys: KeyPairPem,
  subject: Subject,
  validity: Validity,
): string {
  const cert = newCertificate(keys.publicKeyPem, validity);
  const attributes = subjectAttributes(subject);
  cert.setSubject(attributes);
  cert.setIssuer(attributes);
  cert.setExtensions([
    { name: "basicConstraints", cA: true, critical: true },
    keyUsageExtension(CA_KEY_USAGE),
    { name: "subjectKeyIdentifier" },
  ]);
  return signCertificate(cert, createPrivateKey(keys.privateKeyPem));
}

export function loadCertificateAuthority(certPem: string, keyPem: string): CertificateAuthority {
  return {
    certPem,
    cert: forge.pki.certificateFromPem(certPem),
    key: createPrivateKey(keyPem),
    x509: new X509Certificate(certPem),
  };
}

function subjectKeyIdentifierBytes(cert: forge.pki.Certificate): string {
  const extension = cert.getExtension("subjectKeyIdentifier") as
    { subjectKeyIdentifier?: string } | undefined;
  return extension?.subjectKeyIdentifier !== undefined
    ? forge.util.hexToBytes(extension.subjectKeyIdentifier)
    : cert.generateSubjectKeyIdentifier().getBytes();
}

function altNames(spec: CertSpec): { type: number; value?: string; ip?: string }[] {
  return [
    ...spec.sans.dns.map((value) => ({ type: 2, value })),
    ...spec.sans.ips.map((ip) => ({ type: 7, ip })),
  ];
}

export function issueCertificate(
  spec: CertSpec,
  publicKeyPem: string,
  ca: CertificateAuthority,
  validity: Validity,
): string {
  const rsa = isRsa(publicKeyPem);
  const spki = rsa ? undefined : spkiAsn1(publicKeyPem);
  const cert = newCertificate(publicKeyPem, validity, ca.cert.publicKey);
  cert.setSubject(subjectAttributes(spec.subject));
  cert.setIssuer(ca.cert.subject.attributes);
  const extensions: Record<string, unknown>[] = [
    { name: "basicConstraints", cA: false, critical: true },
    keyUsageExtension(spec.keyUsage),
    extKeyUsageExtension(spec.extKeyUsage),
  ];
  const names = altNames(spec);
  if (names.length > 0) extensions.push({ name: "subjectAltName", altNames: names });
  extensions.push(
    spki
      ? {
          id: forge.pki.oids.subjectKeyIdentifier,
          value: forge.asn1.create(
            forge.asn1.Class.UNIVERSAL,
            forge.asn1.Type.OCTETSTRING,
            false,
            keyIdentifierOf(spki),
          ),
        }
      : { name: "subjectKeyIdentifier" },
    { name: "authorityKeyIdentifier", keyIdentifier: subjectKeyIdentifierBytes(ca.cert) },
  );
  cert.setExtensions(extensions);
  return signCertificate(cert, ca.key, spki);
}

/** The SubjectPublicKeyInfo PEM of a private key, for checking that a pair belongs together. */
export function publicKeyPemOf(privateKeyPem: string): string {
  return lf(createPublicKey(privateKeyPem).export({ type: "spki", format: "pem" }).toString());
}
