import { describe, expect, it } from "vitest";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { readState, writeState } from "../src/converge/state.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();

describe("state.json", () => {
  it("a missing file is a fresh start; what is written reads back", async () => {
    const dir = await tmp();
    const fresh = await readState(dir, "lab1");
    expect(fresh).toEqual({ state: { version: 2, lab: "lab1", phases: {}, stages: {} } });
    const state = fresh.state;
    state.phases["master"] = { etcd: { at: "2026-01-01T00:00:00.000Z", digest: "ab" } };
    state.stages["etcd"] = { verifiedAt: "2026-01-01T00:00:00.000Z", detail: "ok", passes: 1 };
    await writeState(dir, state);
    expect((await readState(dir, "lab1")).state).toEqual(state);
    // Written whole and renamed: nothing else is left beside it.
    expect(await readdir(dir)).toEqual(["state.json"]);
  });

  it("a state of the first format (stages only) still reads: its phases run again", async () => {
    const dir = await tmp();
    const v1 = {
      version: 1,
      lab: "lab1",
      stages: { etcd: { verifiedAt: "t", detail: "d", passes: 1 } },
    };
    await writeFile(join(dir, "state.json"), JSON.stringify(v1));
    const { state, problem } = await readState(dir, "lab1");
    expect(problem).toBeUndefined();
    expect(state).toEqual({ version: 2, lab: "lab1", phases: {}, stages: v1.stages });
  });

  it.each([
    [
      "truncated JSON",
      '{"version": 2, "lab": "lab1", "sta',
      /state\.json \(what create verified\) is corrupt: not JSON/,
    ],
    [
      "another lab's",
      JSON.stringify({ version: 2, lab: "other", stages: {} }),
      /belongs to lab "other"/,
    ],
    [
      "a wrong shape",
      JSON.stringify({ version: 2, lab: "lab1", stages: [] }),
      /is corrupt: unexpected content at stages/,
    ],
  ])("%s state is reported, never silently dropped", async (_, text, why) => {
    const dir = await tmp();
    await writeFile(join(dir, "state.json"), text);
    // Read-only use (status): told why, the file stays.
    const looked = await readState(dir, "lab1");
    expect(looked.state.stages).toEqual({});
    expect(looked.problem).toMatch(why);
    expect(await readFile(join(dir, "state.json"), "utf8")).toBe(text);
    // create: the file is moved aside (kept for the user), and the message says where.
    const moved = await readState(dir, "lab1", { setAside: true });
    expect(moved.problem).toMatch(
      /moved to .*state\.json\.corrupt-.*every stage will be checked again/,
    );
    const files = await readdir(dir);
    expect(files).toHaveLength(1);
    expect(files[0]).toMatch(/^state\.json\.corrupt-/);
    expect(await readFile(join(dir, files[0]!), "utf8")).toBe(text);
  });
});
