// Regenerates labs/schema.json and labs/pi/schema.json from the zod schemas, and labs/index.json
// from the built-in labs (npm run schema). Tests keep them in sync.
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { builtinPiLabsDir, piLabJsonSchemaText } from "../src/hypriot/pi-lab.js";
import { builtinIndexPath } from "../src/lab/builtin-index.js";
import { builtinIndexText, labJsonSchemaText } from "../src/lab/json-schema.js";
import { builtinLabsDir } from "../src/lab/load.js";

for (const [target, text] of [
  [join(builtinLabsDir(), "schema.json"), labJsonSchemaText()],
  [join(builtinPiLabsDir(), "schema.json"), piLabJsonSchemaText()],
  [builtinIndexPath(), await builtinIndexText()],
]) {
  await writeFile(target, text);
  console.log(`wrote ${target}`);
}
