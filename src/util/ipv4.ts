/** Small IPv4 arithmetic for planning addresses; values are unsigned 32-bit numbers. */

export interface Cidr {
  network: number;
  prefix: number;
}

export function ipToInt(ip: string): number {
  const parts = ip.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new Error(`not an IPv4 address: ${ip}`);
  }
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

export function intToIp(value: number): string {
  return [24, 16, 8, 0].map((shift) => (value >>> shift) & 255).join(".");
}

function mask(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

export function parseCidr(text: string): Cidr {
  const [ip, prefixText] = text.split("/");
  const prefix = Number(prefixText);
  if (ip === undefined || !Number.isInteger(prefix) || prefix < 0 || prefix > 32) {
    throw new Error(`not an IPv4 CIDR: ${text}`);
  }
  return { network: (ipToInt(ip) & mask(prefix)) >>> 0, prefix };
}

export function formatCidr(c: Cidr): string {
  return `${intToIp(c.network)}/${c.prefix}`;
}

/** True when the address bits of `text` beyond the prefix are not zero (10.1.2.0/16). */
export function hasHostBits(text: string): boolean {
  const [ip] = text.split("/");
  return ip !== undefined && ipToInt(ip) !== parseCidr(text).network;
}

export function size(c: Cidr): number {
  return 2 ** (32 - c.prefix);
}

export function broadcast(c: Cidr): number {
  return (c.network + size(c) - 1) >>> 0;
}

export function contains(c: Cidr, ip: string | number): boolean {
  const value = typeof ip === "number" ? ip : ipToInt(ip);
  return (value & mask(c.prefix)) >>> 0 === c.network;
}

export function overlaps(a: Cidr, b: Cidr): boolean {
  const p = Math.min(a.prefix, b.prefix);
  return (a.network & mask(p)) >>> 0 === (b.network & mask(p)) >>> 0;
}

/** The n-th address of a network (n = 1 is the first usable address). */
export function nthAddress(c: Cidr, n: number): string {
  return intToIp((c.network + n) >>> 0);
}
