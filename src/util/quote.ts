/**
 * Quoting for the two languages k8slab renders. EJS's own `<%=` escapes HTML, which is wrong for
 * both, so the templates are compiled with one of these as their escape function: every `<%= x %>`
 * becomes a literal string in the target language, whatever x holds.
 */

/** A POSIX shell word that means exactly `value`, always in single quotes (' written as '\''). */
export function singleQuote(value: unknown): string {
  return `'${String(value).replace(/'/g, `'\\''`)}'`;
}

/** A POSIX shell word that means exactly `value`: plain words as they are, others single-quoted. */
export function shellQuote(value: unknown): string {
  const text = String(value);
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(text) ? text : singleQuote(text);
}

/** A Ruby string literal that means exactly `value` (single quotes: no interpolation). */
export function rubyQuote(value: unknown): string {
  return `'${String(value).replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}
