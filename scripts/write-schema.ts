// Regenerates labs/schema.json from the zod schema (npm run schema). A test keeps them in sync.
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { labJsonSchemaText } from "../src/lab/json-schema.js";
import { builtinLabsDir } from "../src/lab/load.js";

const target = join(builtinLabsDir(), "schema.json");
await writeFile(target, labJsonSchemaText());
console.log(`wrote ${target}`);
