import {
  Listr,
  ListrLogger,
  PRESET_TIMER,
  ProcessOutput,
  type DefaultRenderer,
  type ListrTaskWrapper,
  type SimpleRenderer,
} from "listr2";
import { stagesUntil, type StageName } from "../converge/stages.js";
import type { ConvergeEvent } from "../converge/converge.js";
import { say, type CliContext } from "./context.js";

const secs = (ms: number) => `${Math.round(ms / 1000)}s`;

/** One line per event, for logs, CI and pipes. */
export function lineReporter(ctx: CliContext, verbose = false): (e: ConvergeEvent) => void {
  return (e) => {
    if (e.type === "output") {
      if (verbose) say(ctx, `    ${e.line}`);
      return;
    }
    if (e.type === "step") {
      say(ctx, `${e.step}: ${e.status === "start" ? "..." : e.status} ${e.detail}`);
      return;
    }
    const head = `stage ${e.stage} (${e.goal})`;
    switch (e.status) {
      case "start":
        return say(ctx, `${head}: started ${e.detail}`);
      case "skip":
        return say(ctx, `${head}: already done, ${e.detail}`);
      case "provision":
        return say(ctx, `${head}: pass ${e.pass}, provisioning ${e.detail}`);
      case "waiting":
        return say(ctx, `${head}: waiting ${secs(e.elapsedMs)}: ${e.detail}`);
      case "done":
        return say(
          ctx,
          `${head}: done in ${secs(e.elapsedMs)} (${e.pass} pass${e.pass === 1 ? "" : "es"}): ${e.detail}`,
        );
    }
  };
}

type TaskWrapper = ListrTaskWrapper<unknown, typeof DefaultRenderer, typeof SimpleRenderer>;

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
  reject: (e: unknown) => void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/**
 * A task list on a terminal (listr2): one line per stage with what it waits for and the time,
 * driven by the events `create` emits while it works.
 */
export async function withTaskList<T>(
  ctx: CliContext,
  until: StageName,
  work: (onEvent: (e: ConvergeEvent) => void) => Promise<T>,
): Promise<T> {
  const stages = stagesUntil(until);
  const gates = new Map(stages.map((s) => [s.name as string, deferred()]));
  const tasks = new Map<string, TaskWrapper>();
  const prep = deferred();
  let prepTask: TaskWrapper | undefined;
  const list = new Listr<unknown, "default", "simple">(
    [
      {
        title: "prepare: render, host checks, artifacts, VMs",
        task: (_c: unknown, task: TaskWrapper) => {
          prepTask = task;
          return prep.promise;
        },
      },
      ...stages.map((s) => ({
        title: `${s.name}: ${s.goal}`,
        task: (_c: unknown, task: TaskWrapper) => {
          tasks.set(s.name, task);
          return gates.get(s.name)!.promise;
        },
      })),
    ],
    {
      concurrent: false,
      exitOnError: true,
      renderer: "default",
      fallbackRenderer: "simple",
      registerSignalListeners: false,
      rendererOptions: {
        timer: PRESET_TIMER,
        // The CLI prints the error with its hint once the list is done.
        showErrorMessage: false,
        logger: new ListrLogger({
          processOutput: new ProcessOutput(
            ctx.stderr as NodeJS.WriteStream,
            ctx.stderr as NodeJS.WriteStream,
          ),
        }),
      },
    },
  );
  const onEvent = (e: ConvergeEvent) => {
    if (e.type === "output") return;
    if (e.type === "step") {
      if (prepTask) prepTask.output = `${e.step}: ${e.detail}`;
      return;
    }
    prep.resolve();
    const task = tasks.get(e.stage);
    const gate = gates.get(e.stage);
    if (e.status === "done" || e.status === "skip") {
      if (task) task.title = `${e.stage}: ${e.detail}`;
      gate?.resolve();
    } else if (task) {
      task.output = `${e.status === "waiting" ? `waiting ${secs(e.elapsedMs)}` : `pass ${e.pass}`}: ${e.detail}`;
    }
  };
  const running = list.run().catch(() => {});
  try {
    const result = await work(onEvent);
    prep.resolve();
    for (const g of gates.values()) g.resolve();
    await running;
    return result;
  } catch (error) {
    prep.reject(error);
    for (const g of gates.values()) g.reject(error);
    await running;
    throw error;
  }
}
