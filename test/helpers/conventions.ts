import fs from 'node:fs';
import path from 'node:path';
import { hex, nowNs } from './otlp-bodies';

export const CONVENTION_FIXTURES = path.join(__dirname, '../fixtures/conventions');

export type FixtureName = 'openinference-langchain-python' | 'openllmetry-python' | 'mcp-semconv';

type JsonKeyValue = { key: string; value: Record<string, unknown> };
interface JsonSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  attributes?: JsonKeyValue[];
  [k: string]: unknown;
}
export interface JsonRequest {
  resourceSpans: { resource: { attributes: JsonKeyValue[] }; scopeSpans: { scope: object; spans: JsonSpan[] }[] }[];
}

/**
 * A convention fixture as an OTLP/JSON request, with fresh ids, now as its time, and the
 * resource's custody.* attributes replaced by `resource` (a key set to undefined is dropped).
 */
export function fixtureRequest(name: FixtureName, resource: Record<string, string | undefined> = {}): JsonRequest {
  const { resourceSpans } = JSON.parse(fs.readFileSync(path.join(CONVENTION_FIXTURES, `${name}.json`), 'utf8')) as JsonRequest;
  const t = nowNs();
  for (const rs of resourceSpans) {
    const attrs = rs.resource.attributes.filter((kv) => !(kv.key in resource));
    for (const [key, v] of Object.entries(resource)) if (v !== undefined) attrs.push({ key, value: { stringValue: v } });
    rs.resource.attributes = attrs;
    for (const ss of rs.scopeSpans) {
      for (const s of ss.spans) {
        Object.assign(s, { traceId: hex(16), spanId: hex(8), parentSpanId: hex(8), startTimeUnixNano: String(t - 5_000_000n), endTimeUnixNano: String(t) });
      }
    }
  }
  return { resourceSpans };
}

/** The first span of a request, to edit in place. */
export function firstSpan(req: JsonRequest): JsonSpan {
  return req.resourceSpans[0]!.scopeSpans[0]!.spans[0]!;
}

/** Drops an attribute from a span. */
export function dropAttribute(span: JsonSpan, key: string): void {
  span.attributes = (span.attributes ?? []).filter((kv) => kv.key !== key);
}
