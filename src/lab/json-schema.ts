import { z } from "zod";
import { labSchema } from "./schema.js";

/** labs/schema.json, as editors read it (the input shape: defaults make keys optional). */
export function labJsonSchemaText(): string {
  const schema = z.toJSONSchema(labSchema, { io: "input", target: "draft-7" });
  return `${JSON.stringify({ ...schema, title: "k8slab lab file" }, null, 2)}\n`;
}
