import fs from 'node:fs';
import { LineCounter, parseDocument, isNode } from 'yaml';
import type { z } from 'zod';
import { ConfigError } from './errors';

/**
 * Reads a YAML (or JSON) file and validates it with a zod schema. A bad file is refused with
 * an error that names the file, the line, the field and what was expected.
 */
export function loadConfigFile<S extends z.ZodType>(file: string, schema: S): Readonly<z.infer<S>> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read: ${(err as Error).message}`, { cause: err });
  }
  return parseConfigText(text, file, schema);
}

export function parseConfigText<S extends z.ZodType>(text: string, file: string, schema: S): Readonly<z.infer<S>> {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false });
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    const pos = lineCounter.linePos(e.pos[0]);
    throw new ConfigError(`${file}:${pos.line}:${pos.col}: not valid YAML: ${e.message.split('\n')[0]}`);
  }
  const result = schema.safeParse(doc.toJS() ?? {});
  if (result.success) return deepFreeze(result.data);
  const messages = result.error.issues.slice(0, 5).map((issue) => {
    const path = issue.path.map(String);
    let node: unknown = path.length ? doc.getIn(issue.path as (string | number)[], true) : doc.contents;
    // a missing field has no node: point at its parent
    for (let n = path.length - 1; !isNode(node) && n >= 0; n--) node = n ? doc.getIn(issue.path.slice(0, n) as (string | number)[], true) : doc.contents;
    const line = isNode(node) && node.range ? lineCounter.linePos(node.range[0]).line : undefined;
    const where = line ? `${file}:${line}` : file;
    const field = path.length ? path.join('.') : '(top level)';
    return `${where}: field '${field}': ${issue.message}`;
  });
  throw new ConfigError(messages.join('\n'));
}

export function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value as object)) deepFreeze(v);
  }
  return value;
}
