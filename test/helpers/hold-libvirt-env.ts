/**
 * For developers: start the e2e test's private libvirt environment (test/helpers/libvirt-env.ts)
 * with the test box added, and hold it until Ctrl-C (or SIGTERM), so VMs can stay up while one
 * phase is worked on. Run as root:
 *
 *   npx tsx test/helpers/hold-libvirt-env.ts [ENV_FILE]
 *
 * ENV_FILE (default /tmp/k8slab-libvirt-env.sh) is written once the environment is up; source it
 * and run commands inside the namespaces with `lv CMD...` (e.g. `lv vagrant status`,
 * `lv node dist/cli/bin.js create ...`). On exit everything is destroyed, as after a test.
 */
import { writeFile, rm } from "node:fs/promises";
import { ensureTestBox, startLibvirtEnv } from "./libvirt-env.js";
import { singleQuote } from "../../src/util/quote.js";

const envFile = process.argv[2] ?? "/tmp/k8slab-libvirt-env.sh";
const box = await ensureTestBox({ onProgress: (l) => console.error(`[box] ${l}`) });
const env = await startLibvirtEnv({ onProgress: (l) => console.error(`[env] ${l}`) });
let stopping = false;
const stop = async (): Promise<void> => {
  if (stopping) return;
  stopping = true;
  console.error("stopping: destroying every VM and the namespaces");
  await env.stop();
  await rm(envFile, { force: true });
  console.error(`left over: ${JSON.stringify(await env.leftovers())}`);
  process.exit(0);
};
process.on("SIGINT", () => void stop());
process.on("SIGTERM", () => void stop());

const added = await env.exec("vagrant", ["box", "add", "--name", "k8slab-test/bookworm", box], {
  timeoutMs: 300_000,
});
if (added.exitCode !== 0) {
  console.error(added.all);
  await stop();
}
const exports = Object.entries(env.env)
  .filter(([k]) => /^(PATH|VAGRANT_|LIBVIRT_|TMPDIR|LC_ALL)/.test(k))
  .map(([k, v]) => `export ${k}=${singleQuote(v)}`);
const enter = env.enterArgs().filter((a) => !a.startsWith("--wd=") && a !== "--");
await writeFile(
  envFile,
  [
    `# k8slab libvirt environment ${env.id} (held by pid ${process.pid})`,
    ...exports,
    `K8SLAB_LV_NETNS=${singleQuote(env.netns)}`,
    `K8SLAB_LV_HOLDER_PID=${process.pid}`,
    `lv() { nsenter ${enter.map(singleQuote).join(" ")} --wd="$PWD" -- "$@"; }`,
    "",
  ].join("\n"),
);
console.error(`environment ${env.id} is up; source ${envFile} and use: lv vagrant status`);
setInterval(() => undefined, 1 << 30);
