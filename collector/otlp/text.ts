// String.prototype.isWellFormed and toWellFormed are ES2024, in every Node custody supports
// (20.19+), but not in the ES2023 library the build compiles against.
declare global {
  interface String {
    isWellFormed(): boolean;
    toWellFormed(): string;
  }
}

/**
 * Whether parsing this JSON text can produce a string with a lone UTF-16 surrogate. Text decoded
 * from UTF-8 never holds one, so one can come only from a `\uD800`–`\uDFFF` escape (the stock OTel
 * JS JSON exporter writes one when it cuts a string inside an emoji). False positives (an escaped
 * backslash followed by `ud8…`) only cost a closer look.
 */
export function mayHoldLoneSurrogates(jsonText: string): boolean {
  return /\\u[dD][89a-fA-F]/.test(jsonText) || !jsonText.isWellFormed();
}

/**
 * Replaces, in place, each lone surrogate in the strings of a parsed JSON value with U+FFFD:
 * ClickHouse refuses rows that hold one. Walks with its own stack, not by recursion: JSON.parse
 * reads any depth, and the depth limit is checked later.
 */
export function makeStringsWellFormed(root: unknown): void {
  const stack: unknown[] = [root];
  while (stack.length) {
    const node = stack.pop();
    if (typeof node !== 'object' || node === null) continue;
    const record = node as Record<string, unknown>;
    for (const key of Object.keys(record)) {
      const v = record[key];
      if (typeof v === 'string') {
        if (v.isWellFormed()) continue;
        // JSON.parse makes `__proto__` an own property; a plain assignment would not replace it
        Object.defineProperty(record, key, { value: v.toWellFormed(), enumerable: true, configurable: true, writable: true });
      } else if (typeof v === 'object' && v !== null) {
        stack.push(v);
      }
    }
  }
}
