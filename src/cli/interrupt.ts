import { K8slabError } from "../errors.js";

/**
 * Run `work` so that Ctrl-C (or SIGTERM) stops it cleanly: the signal aborts `work`'s
 * AbortSignal, which stops its child processes, and the run then ends with `reason` (exit 130)
 * whatever the cancelled child or timer threw.
 */
export async function untilInterrupted<T>(
  reason: { message: string; hint: string },
  work: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const controller = new AbortController();
  const onSignal = () =>
    controller.abort(new K8slabError(reason.message, { exitCode: 130, hint: reason.hint }));
  // `on`, not `once`: execa's exit hook re-raises the signal when it sees no other listener.
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    return await work(controller.signal);
  } catch (error) {
    if (controller.signal.aborted) throw controller.signal.reason;
    throw error;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}
