import { randomFillSync } from 'node:crypto';

// Crockford base32, as ULID uses: sorts the same as text and as time.
const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const TIME_LEN = 10;
const RANDOM_LEN = 16;
const MAX_TIME = 2 ** 48 - 1;

// Random bytes are drawn in blocks: one syscall per 512 ids instead of one per id.
const pool = Buffer.alloc(512 * RANDOM_LEN);
let poolOffset = pool.length;

let lastTime = -1;
const lastRandom = new Uint8Array(RANDOM_LEN); // one base32 digit (0..31) per entry

/**
 * A policy decision id: a ULID (48-bit millisecond time + 80 random bits, 26 characters of
 * Crockford base32). Ids sort by creation time as plain strings, and within one millisecond
 * they are monotonic (the random part is incremented), so the decision log orders exactly.
 */
export function decisionId(now: number = Date.now()): string {
  if (!Number.isInteger(now) || now < 0 || now > MAX_TIME) throw new RangeError(`decision id time out of range: ${now}`);
  if (now <= lastTime) {
    // Same (or an earlier, clock stepped back) millisecond: keep the last time, add one.
    now = lastTime;
    if (!increment(lastRandom)) {
      now = lastTime + 1;
      fillRandom(lastRandom);
    }
  } else {
    fillRandom(lastRandom);
  }
  lastTime = now;
  let t = now;
  const time = new Array<string>(TIME_LEN);
  for (let i = TIME_LEN - 1; i >= 0; i--) {
    time[i] = ALPHABET[t % 32]!;
    t = Math.floor(t / 32);
  }
  let out = time.join('');
  for (let i = 0; i < RANDOM_LEN; i++) out += ALPHABET[lastRandom[i]!]!;
  return out;
}

/** The millisecond time a decision id was made at. */
export function decisionIdTime(id: string): number {
  if (!isDecisionId(id)) throw new TypeError(`not a decision id: ${id}`);
  let t = 0;
  for (let i = 0; i < TIME_LEN; i++) t = t * 32 + ALPHABET.indexOf(id[i]!);
  return t;
}

const ID_PATTERN = /^[0-7][0-9A-HJKMNP-TV-Z]{25}$/;
export function isDecisionId(id: unknown): id is string {
  return typeof id === 'string' && ID_PATTERN.test(id);
}

function fillRandom(digits: Uint8Array): void {
  if (poolOffset + RANDOM_LEN > pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  for (let i = 0; i < RANDOM_LEN; i++) digits[i] = pool[poolOffset + i]! & 31;
  poolOffset += RANDOM_LEN;
  // Leave headroom for increments within the millisecond.
  digits[0] = digits[0]! & 15;
}

function increment(digits: Uint8Array): boolean {
  for (let i = RANDOM_LEN - 1; i >= 0; i--) {
    if (digits[i]! < 31) {
      digits[i]!++;
      return true;
    }
    digits[i] = 0;
  }
  return false;
}
