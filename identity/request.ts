import { z } from 'zod';
import { REFUSAL, refuse } from './errors';

/** Shared field parsing for /issue and /token bodies, which come as JSON or as a form (strings). */

const CONTROL = /[\u0000-\u001f\u007f]/;
export const idString = z
  .string()
  .max(256, 'must be at most 256 characters')
  .refine((s) => !CONTROL.test(s), 'must not contain control characters')
  .transform((s) => s.trim());

/** Seconds as a JSON number or a form string of digits. */
export const ttlField = z
  .union([z.number(), z.string().regex(/^\d+$/, 'must be a whole number of seconds').transform(Number)])
  .pipe(z.number().int('must be a whole number of seconds').positive('must be more than 0').max(366 * 86400, 'is not a token lifetime'));

/** A list of tools: a JSON array, or (forms, scopes) one string separated by spaces or commas. */
export const toolList = z
  .union([z.array(idString), idString.transform((s) => s.split(/[\s,]+/))])
  .transform((list) => [...new Set(list.map((t) => t.trim()).filter(Boolean))]);

/** Empty strings mean "not given", as form fields often are. */
export const optionalId = idString.optional().transform((s) => (s === '' ? undefined : s));

export function parseBody<S extends z.ZodType>(schema: S, body: unknown): z.infer<S> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw refuse(REFUSAL.INVALID_REQUEST, 'the body must be a JSON object or a form');
  }
  const parsed = schema.safeParse(body);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  const field = issue.path.map(String).join('.') || '(body)';
  throw refuse(REFUSAL.INVALID_REQUEST, `field '${field}': ${issue.message}`);
}

/** Bodies that the refusal report may read fields from, unchecked: never trusted for anything else. */
export function bodyField(body: unknown, name: string): string | undefined {
  const v = typeof body === 'object' && body !== null ? (body as Record<string, unknown>)[name] : undefined;
  return typeof v === 'string' && v.length <= 256 ? v : undefined;
}
