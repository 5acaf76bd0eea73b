import fs from 'node:fs';
import path from 'node:path';
import Ajv2020, { type ValidateFunction } from 'ajv/dist/2020';
import addFormats from 'ajv-formats';
import { counter } from '../../common/metrics';
import { METRIC } from '../../common/names';

/**
 * Validates audit rows against audit-log-schema.json (the seed artifact) and counts violations
 * per field on /metrics. A row that violates the schema is still stored: a missing sponsor is the
 * signal, not noise to drop.
 */
export interface SchemaViolation {
  field: string;
  message: string;
}

const violations = counter<'field'>({
  name: METRIC.AUDIT_SCHEMA_VIOLATIONS_TOTAL,
  help: 'Tool-call spans whose audit row violates audit-log-schema.json, by field',
  labelNames: ['field'],
});

let validator: ValidateFunction | undefined;

export function schemaPath(): string {
  // collector/audit/schema.ts sits two levels below the package root, dist/collector/audit/schema.js three
  for (const dir of [path.resolve(__dirname, '../..'), path.resolve(__dirname, '../../..')]) {
    const file = path.join(dir, 'audit-log-schema.json');
    if (fs.existsSync(file)) return file;
  }
  throw new Error('audit-log-schema.json not found beside the custody package');
}

function compile(): ValidateFunction {
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  addFormats(ajv);
  return ajv.compile(JSON.parse(fs.readFileSync(schemaPath(), 'utf8')));
}

/** Returns the violations of one audit row (empty when valid) and counts them. */
export function validateAuditRow(row: Record<string, unknown>): SchemaViolation[] {
  validator ??= compile();
  if (validator(row)) return [];
  const found = new Map<string, string>();
  for (const err of validator.errors ?? []) {
    const field =
      err.keyword === 'required' ? String(err.params.missingProperty) : err.instancePath.replace(/^\//, '').split('/')[0] || '(row)';
    if (!found.has(field)) found.set(field, err.message ?? 'invalid');
  }
  for (const field of found.keys()) violations.inc({ field });
  return [...found].map(([field, message]) => ({ field, message }));
}
