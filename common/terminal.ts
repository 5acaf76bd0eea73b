/**
 * Text for a terminal from values agents wrote. A sponsor id, tool name or error message comes from
 * whoever ran the agent: printed as it is, an escape sequence in it could clear the screen, move
 * the cursor, set the window title, hide text (bidi overrides) or, with a CR or LF, print a line
 * that looks like custody's own ("all calls verified"). Every character a terminal acts on is
 * shown escaped instead: C0 controls, DEL, C1 controls (8-bit CSI/OSC), the Unicode bidi
 * embeddings, overrides, isolates and marks, and the line and paragraph separators.
 */

// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
// the same but the newline: for text whose lines are custody's own
// eslint-disable-next-line no-control-regex
const UNSAFE_BUT_NEWLINE = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
// what JSON.stringify leaves as it is (it escapes C0 itself)
const UNSAFE_IN_JSON = /[\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

function escape(c: string): string {
  const named = NAMED[c];
  if (named) return named;
  const code = c.charCodeAt(0);
  return code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
}

/** One value, on one line, with nothing a terminal would act on (`\x1b`, `\n`, `\u202e` shown as such). */
export function safeText(value: unknown): string {
  return String(value ?? '').replace(UNSAFE, escape);
}

/** Text whose line breaks are custody's own: everything else a terminal acts on is escaped. */
export function safeLines(text: string): string {
  return text.replace(UNSAFE_BUT_NEWLINE, escape);
}

/** JSON.stringify, with the characters it leaves raw (C1, bidi, separators) written as \u escapes: still the same JSON. */
export function safeJson(value: unknown, space?: number): string {
  return (JSON.stringify(value, null, space) ?? 'null').replace(UNSAFE_IN_JSON, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
