import { CustodyError } from './errors';

const UNITS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400, w: 604800 };

/** Parses `15m`, `24h`, `90s`, `2d`, `500ms` or a bare number of seconds into seconds. */
export function parseDuration(text: string, what = 'duration'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$/.exec(text);
  if (!m) throw new CustodyError('ERR_INVALID_DURATION', `${what} '${text}' is not a duration such as 90s, 15m, 24h or 7d`);
  const seconds = Number(m[1]) * UNITS[m[2] ?? 's']!;
  if (!Number.isFinite(seconds) || seconds <= 0) {
    throw new CustodyError('ERR_INVALID_DURATION', `${what} '${text}' must be greater than zero`);
  }
  return seconds;
}

/** Parses `--since` values: a duration back from now (`24h`) or an ISO-8601 timestamp. Returns epoch ms. */
export function parseSince(text: string, now = Date.now()): number {
  if (/^\s*\d+(?:\.\d+)?\s*(ms|s|m|h|d|w)?\s*$/.test(text)) return now - parseDuration(text, '--since') * 1000;
  const t = Date.parse(text);
  if (Number.isNaN(t)) throw new CustodyError('ERR_INVALID_DURATION', `--since '${text}' is neither a duration (24h) nor an ISO-8601 time`);
  return t;
}
