/**
 * Allow decisions the enforcer may reuse. Only allows go in; a deny for the same key takes the
 * allow out. Freshness is judged when read, against the TTL in force then, so the incident switch
 * (a longer TTL) also covers allows stored before it was turned on. Entries are kept up to
 * `retentionMs` (the longest TTL there can be) and at most `maxEntries`, oldest out first.
 */
export class AllowCache<V> {
  private readonly entries = new Map<string, { value: V; storedAt: number }>();
  constructor(
    private readonly maxEntries: number,
    private readonly retentionMs: number,
  ) {}

  get(key: string, now: number, ttlMs: number): { value: V; storedAt: number } | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    const age = now - e.storedAt;
    if (age >= this.retentionMs || age < 0) {
      this.entries.delete(key);
      return undefined;
    }
    return age < ttlMs ? e : undefined;
  }

  set(key: string, value: V, now: number): void {
    this.entries.delete(key);
    if (this.entries.size >= this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
    this.entries.set(key, { value, storedAt: now });
  }

  delete(key: string): void {
    this.entries.delete(key);
  }

  clear(): void {
    this.entries.clear();
  }

  get size(): number {
    return this.entries.size;
  }
}

/** Tokens the enforcer may present again: until `marginMs` before they expire. */
export class TokenCache<T extends { expiresAt: number }> {
  private readonly entries = new Map<string, T>();
  constructor(
    private readonly maxEntries: number,
    private readonly marginMs: number,
  ) {}

  get(key: string, now: number): T | undefined {
    const t = this.entries.get(key);
    if (!t) return undefined;
    if (t.expiresAt - now <= this.marginMs) {
      this.entries.delete(key);
      return undefined;
    }
    return t;
  }

  set(key: string, token: T): void {
    this.entries.delete(key);
    if (this.entries.size >= this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
    this.entries.set(key, token);
  }

  delete(key: string): void {
    this.entries.delete(key);
  }

  clear(): void {
    this.entries.clear();
  }
}
