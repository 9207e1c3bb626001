import type { MachineStatus } from "../machines/machines.js";
/** Vagrant's --machine-readable lines: timestamp,target,type,data... */
export interface MachineLine {
  timestamp: number;
  target: string;
  type: string;
  data: string[];
}

function unescape(field: string): string {
  return field
    .replace(/%!\(VAGRANT_COMMA\)/g, ",")
    .replace(/\\n/g, "\n")
    .replace(/\\r/g, "\r");
}

export function parseMachineReadable(output: string): MachineLine[] {
  const lines: MachineLine[] = [];
  for (const raw of output.split(/\r?\n/)) {
    const fields = raw.split(",");
    if (fields.length < 3 || !/^\d+$/.test(fields[0] ?? "")) continue;
    lines.push({
      timestamp: Number(fields[0]),
      target: fields[1] ?? "",
      type: fields[2] ?? "",
      data: fields.slice(3).map(unescape),
    });
  }
  return lines;
}

/** Human text of a machine-readable stream (the `ui` lines), for logs and error tails. */
export function uiText(lines: readonly MachineLine[]): string {
  return lines
    .filter((l) => l.type === "ui")
    .map((l) => l.data.slice(1).join(","))
    .join("\n");
}

/** The error Vagrant reported when it exited with one: its class and message. */
export function errorExit(
  lines: readonly MachineLine[],
): { kind: string; message: string } | undefined {
  const line = lines.find((l) => l.type === "error-exit");
  return line ? { kind: line.data[0] ?? "", message: line.data.slice(1).join(",") } : undefined;
}

export type { MachineStatus } from "../machines/machines.js";

export function machineStatuses(lines: readonly MachineLine[]): MachineStatus[] {
  const byName = new Map<string, MachineStatus>();
  for (const l of lines) {
    if (!l.target) continue;
    const m = byName.get(l.target) ?? { name: l.target, state: "unknown", provider: "" };
    if (l.type === "state") m.state = l.data[0] ?? m.state;
    if (l.type === "provider-name") m.provider = l.data[0] ?? m.provider;
    byName.set(l.target, m);
  }
  return [...byName.values()];
}
