import { Writable } from "node:stream";
import type { CliContext } from "../../src/cli/context.js";
import { runCli } from "../../src/cli/main.js";

class Capture extends Writable {
  text = "";
  override _write(
    chunk: Buffer | string,
    _enc: BufferEncoding,
    done: (error?: Error | null) => void,
  ) {
    this.text += chunk.toString();
    done();
  }
}

/** Run the CLI in-process with captured output. */
export async function cli(
  args: string[],
  options: { cwd: string; env?: NodeJS.ProcessEnv },
): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new Capture();
  const stderr = new Capture();
  const ctx: CliContext = {
    cwd: options.cwd,
    env: options.env ?? process.env,
    stdout,
    stderr,
    interactive: false,
  };
  const code = await runCli(args, ctx);
  return { code, stdout: stdout.text, stderr: stderr.text };
}
