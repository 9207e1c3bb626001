import { execa } from "execa";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { NspawnCluster, NspawnNode } from "./nspawn-cluster.js";

/** Logins on every node: root, a user with passwordless sudo, and one with no sudo rights. */
export const SSH_USERS = { root: "root", sudo: "lab", noSudo: "nosudo" } as const;

export interface SshKey {
  /** The private key file (ed25519, no passphrase), in the test's own directory. */
  identityFile: string;
  publicKey: string;
}

/** A key for one test, made with ssh-keygen in `dir` (removed with the test's directory). */
export async function makeSshKey(dir: string): Promise<SshKey> {
  const identityFile = join(dir, "id_ed25519");
  await execa(
    "ssh-keygen",
    ["-q", "-t", "ed25519", "-N", "", "-C", "k8slab-test", "-f", identityFile],
    {
      timeout: 30_000,
    },
  );
  return { identityFile, publicKey: (await readFile(`${identityFile}.pub`, "utf8")).trim() };
}

/**
 * Let `key` log in to a node's sshd (its openssh-server runs from boot) as root, as the sudo
 * user and as the user without sudo, and make sure sshd runs. Bounded: each step has the node
 * harness's exec deadline.
 */
export async function authorizeSsh(node: NspawnNode, key: SshKey): Promise<void> {
  const { sudo, noSudo } = SSH_USERS;
  const script = `
set -eu
for u in ${sudo} ${noSudo}; do id "$u" >/dev/null 2>&1 || useradd -m -s /bin/bash "$u"; done
printf '%s ALL=(ALL) NOPASSWD: ALL\\n' ${sudo} >/etc/sudoers.d/${sudo}
chmod 0440 /etc/sudoers.d/${sudo}
for u in root ${sudo} ${noSudo}; do
  home=$(getent passwd "$u" | cut -d: -f6)
  install -d -m 0700 -o "$u" -g "$u" "$home/.ssh"
  printf '%s\\n' "$KEY" >"$home/.ssh/authorized_keys"
  chown "$u:$u" "$home/.ssh/authorized_keys"
  chmod 0600 "$home/.ssh/authorized_keys"
done
systemctl start ssh.service
systemctl is-active ssh.service
`;
  const result = await node.exec(`KEY=${shellWord(key.publicKey)}; ${script}`, {
    timeoutMs: 60_000,
  });
  if (result.exitCode !== 0) {
    throw new Error(
      `authorizing the test key on ${node.name} failed: ${result.stdout}${result.stderr}`,
    );
  }
}

export async function authorizeSshEverywhere(cluster: NspawnCluster, key: SshKey): Promise<void> {
  await Promise.all(cluster.nodes.map((n) => authorizeSsh(n, key)));
}

function shellWord(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}
