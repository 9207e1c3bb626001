import { z } from "zod";
import { listBuiltinPiLabs } from "../hypriot/pi-lab.js";
import type { BuiltinIndexEntry } from "./builtin-index.js";
import { listBuiltinLabs, PI_LAB_KIND, type BuiltinLab, type LabKind } from "./load.js";
import { labSchema } from "./schema.js";

/** labs/schema.json, as editors read it (the input shape: defaults make keys optional). */
export function labJsonSchemaText(): string {
  const schema = z.toJSONSchema(labSchema, { io: "input", target: "draft-7" });
  return `${JSON.stringify({ ...schema, title: "k8slab lab file" }, null, 2)}\n`;
}

/** labs/index.json (see builtin-index.ts): every built-in lab, VM labs first. */
export async function builtinIndexText(): Promise<string> {
  const entry =
    (kind: LabKind) =>
    ({ name, description, nodes }: BuiltinLab): BuiltinIndexEntry => ({
      name,
      kind,
      description,
      nodes,
    });
  const entries = [
    ...(await listBuiltinLabs()).map(entry("vm")),
    ...(await listBuiltinPiLabs()).map(entry(PI_LAB_KIND)),
  ];
  return `${JSON.stringify(entries, null, 2)}\n`;
}
