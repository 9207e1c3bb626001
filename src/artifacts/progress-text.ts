import type { PullProgress } from "./cache.js";

export const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;

/**
 * What a person reads about a download, one line per event (`cache pull` and `create` say the
 * same things): every progress event on a terminal, at most one line per 10% otherwise. The
 * returned function is stateful (per artifact); undefined means "nothing worth a line".
 */
export function downloadNarrator(interactive: boolean): (p: PullProgress) => string | undefined {
  const progress = progressLines(interactive);
  return (p) => {
    switch (p.event) {
      case "cached":
        return `${p.name}: in the cache, sha256 verified (${mb(p.total ?? 0)})`;
      case "damaged":
        return `${p.name}: the cached copy is damaged (${p.message}); downloading it again`;
      case "recorded":
        return `${p.name}: its upstream publishes no sha256; recorded the first download's: ${p.sha256} (every later use must match it)`;
      case "resolved":
        return `${p.name}: resolved to ${p.sha256} and recorded (to pin it in the lab file, write it as ${p.name}@${p.sha256})`;
      case "start":
        return `${p.name}: downloading`;
      case "retry":
        return `${p.name}: ${p.message ?? "retrying"}`;
      case "done":
        return `${p.name}: downloaded and verified (${mb(p.received ?? 0)})`;
      case "progress":
        return progress(p.name, p.received ?? 0, p.total);
    }
  };
}

/**
 * "name: 12.0 MB of 400.0 MB" for a transfer of known size: every time on a terminal, at most
 * once per 10% of each name otherwise (a log stays short). Stateful; undefined: no line.
 */
export function progressLines(
  interactive: boolean,
): (name: string, done: number, total: number | undefined) => string | undefined {
  const lastDecile = new Map<string, number>();
  return (name, done, total) => {
    if (!total) return undefined;
    const decile = Math.floor((done / total) * 10);
    if (!interactive && decile === lastDecile.get(name)) return undefined;
    lastDecile.set(name, decile);
    return `${name}: ${mb(done)} of ${mb(total)}`;
  };
}
