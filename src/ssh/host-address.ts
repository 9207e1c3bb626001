import { createSocket } from "node:dgram";
import { K8slabError } from "../errors.js";

/** Any port: connecting a UDP socket only asks the kernel for a route, nothing is sent. */
const PROBE_PORT = 9;

/**
 * The address this host has toward `ip`: the source address the kernel picks for packets to it
 * (what `ip route get <ip>` names after `src`). Machines that k8slab did not create have no
 * host-only .1 to reach the host at; this is the address they can reach it at. Found by
 * connecting a UDP socket, which sends nothing and works on every host OS without `ip`.
 */
export async function hostAddressToward(ip: string): Promise<string> {
  const socket = createSocket("udp4");
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("error", reject);
      socket.connect(PROBE_PORT, ip, () => {
        socket.off("error", reject);
        resolve();
      });
    });
    const { address } = socket.address();
    if (!address || address === "0.0.0.0") throw new Error(`no source address toward ${ip}`);
    return address;
  } catch (error) {
    throw new K8slabError(`this host has no route to ${ip}`, {
      hint: `the nodes must be reachable from this host; check: ip route get ${ip}`,
      cause: error,
    });
  } finally {
    socket.close();
  }
}
