import { describe, expect, it } from "vitest";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { CorruptFileError, readJsonFile } from "../src/lab-dir/json-file.js";
import { useTmpDirs } from "./helpers/tmp.js";

const tmp = useTmpDirs();
// The shape of state.json: what `create` verified, for the next run.
const schema = z.object({ version: z.literal(1), stages: z.record(z.string(), z.object({})) });
const options = { what: "the record of verified stages", fix: "remove it; create re-checks" };

describe("readJsonFile (lab.json, state.json, the PKI manifest, pins.json)", () => {
  it("is undefined for a missing file and the data for a valid one", async () => {
    const dir = await tmp();
    expect(await readJsonFile(join(dir, "state.json"), schema, options)).toBeUndefined();
    await writeFile(join(dir, "state.json"), '{"version": 1, "stages": {"etcd": {}}}');
    expect(await readJsonFile(join(dir, "state.json"), schema, options)).toEqual({
      version: 1,
      stages: { etcd: {} },
    });
  });

  for (const [what, text, reason] of [
    ["empty", "", /it is empty/],
    ["truncated", '{"version": 1, "stages": {"et', /not JSON/],
    ["of another shape", '{"version": 2, "stages": {}}', /unexpected content at version/],
    ["not an object", "[1, 2]", /unexpected content/],
  ] as const) {
    it(`reports a file that is ${what}, naming it, the cause and the fix`, async () => {
      const dir = await tmp();
      const file = join(dir, "state.json");
      await writeFile(file, text);
      const error = await readJsonFile(file, schema, options).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(CorruptFileError);
      expect((error as CorruptFileError).message).toMatch(
        new RegExp(`^${file} \\(the record of verified stages\\) is corrupt: `),
      );
      expect((error as CorruptFileError).message).toMatch(reason);
      expect((error as CorruptFileError).hint).toBe(options.fix);
    });
  }
});
