import { K8slabError } from "../errors.js";
import { runCommand, type Runner } from "../util/exec.js";

/**
 * The address this host has toward `ip`: the source address the kernel picks for a packet to it
 * (`ip route get <ip>` names it after `src`). Machines that k8slab did not create have no
 * host-only .1 to reach the host at; this is the address they can reach it at.
 */
export async function hostAddressToward(ip: string, runner: Runner = runCommand): Promise<string> {
  let stdout: string;
  try {
    ({ stdout } = await runner("ip", ["route", "get", ip], {
      timeoutMs: 10_000,
      missingHint: "install iproute2 (Debian/Ubuntu: apt-get install iproute2)",
    }));
  } catch (error) {
    throw new K8slabError(`this host has no route to ${ip}`, {
      hint: `the nodes must be reachable from this host; check: ip route get ${ip}`,
      cause: error,
    });
  }
  const src = /\bsrc\s+(\d+\.\d+\.\d+\.\d+)/.exec(stdout)?.[1];
  if (!src) {
    throw new K8slabError(`ip route get ${ip} names no source address: ${stdout.trim()}`, {
      hint: `the nodes must be reachable from this host; check: ip route get ${ip}`,
    });
  }
  return src;
}
