import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AGENT_ENV, ENV_VARS, SERVER_ENV, envTableMarkdown, readEnv } from '../../common/env';
import { ConfigError } from '../../common/errors';
import { ENV } from '../../common/names';
import { ROOT } from '../helpers/custody';

/**
 * The one schema of every environment variable: each variable the source reads is in it, the
 * README's table lists the same variables (it is the one generated from the schema), values are
 * typed, and a bad value is refused naming the variable (and never repeating a secret).
 */
describe('common/env', () => {
  // declared in common/names.ts ENV (a public export) but no longer read by anything
  const NOT_READ = new Set<string>([ENV.RULE_MIN_SAMPLE]);

  it('covers every variable named in common/names.ts ENV', () => {
    for (const name of Object.values(ENV)) if (!NOT_READ.has(name)) expect(ENV_VARS, name).toHaveProperty([name]);
    for (const name of NOT_READ) expect(ENV_VARS).not.toHaveProperty([name]);
  });

  it('covers every CUSTODY_*/OTEL_* variable the source names', () => {
    const named = new Set<string>();
    const walk = (dir: string): void => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (p.endsWith('.ts')) for (const m of fs.readFileSync(p, 'utf8').matchAll(/\b(?:CUSTODY|OTEL)_[A-Z0-9_]*[A-Z0-9]\b/g)) named.add(m[0]);
      }
    };
    for (const d of ['common', 'collector', 'enforcer', 'identity', 'instrumentation', 'cli']) walk(path.join(ROOT, d));
    // OTEL_TRACES is a table name (otel_traces), not a variable
    const missing = [...named].filter((n) => !(n in ENV_VARS) && !NOT_READ.has(n) && n !== 'OTEL_TRACES');
    expect(missing).toEqual([]);
  });

  it('the README table lists the same variables as the schema, as generated from it', () => {
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const m = /<!-- env-table[^>]*-->\n([\s\S]*?)\n<!-- \/env-table -->/.exec(readme);
    expect(m, 'README.md has an env-table section').not.toBeNull();
    const listed = [...m![1]!.matchAll(/^\| `([A-Z0-9_]+)` \|/gm)].map((r) => r[1]);
    expect(listed).toEqual(Object.keys(ENV_VARS));
    expect(m![1]).toBe(envTableMarkdown());
    // and only one such table
    expect(readme.match(/<!-- env-table/g)).toHaveLength(1);
  });

  it('parses typed values and leaves unset ones undefined', () => {
    const env = readEnv({
      CUSTODY_INGEST_MAX_BODY_BYTES: '1024',
      CUSTODY_ROLLBACK_INTERVAL: '5s',
      CUSTODY_ROLLBACK_DRY_RUN: 'on',
      CUSTODY_CHECKPOINT_LAG: '0',
      CUSTODY_CHECKPOINT_PERIOD: '2m',
      CUSTODY_CHECKPOINTER: 'off',
      CUSTODY_AUDIT_RETENTION_DAYS: '30',
      CUSTODY_ADMIN_TOKEN: '  ',
      CUSTODY_ROLLOUT_TOKEN: ' r0llout ',
      CUSTODY_CAPTURE_CONTENT: 'YES',
    });
    expect(env).toMatchObject({
      CUSTODY_INGEST_MAX_BODY_BYTES: 1024,
      CUSTODY_ROLLBACK_INTERVAL: 5,
      CUSTODY_ROLLBACK_DRY_RUN: true,
      CUSTODY_CHECKPOINT_LAG: 0,
      CUSTODY_CHECKPOINT_PERIOD: 120,
      CUSTODY_CHECKPOINTER: false,
      CUSTODY_AUDIT_RETENTION_DAYS: 30,
      CUSTODY_ROLLOUT_TOKEN: 'r0llout',
      CUSTODY_CAPTURE_CONTENT: true,
    });
    // a blank credential is unset
    expect(env.CUSTODY_ADMIN_TOKEN).toBeUndefined();
    expect(env.CUSTODY_ROLLBACK_WINDOW).toBeUndefined();
    expect(Object.isFrozen(env)).toBe(true);
  });

  it('refuses a bad value with a ConfigError naming the variable', () => {
    const bad: Record<string, string> = {
      CUSTODY_INGEST_MAX_BODY_BYTES: '-1',
      CUSTODY_INGEST_MAX_QUEUE_ROWS: '1e3',
      CUSTODY_ROLLBACK_WATCH: 'maybe',
      CUSTODY_ROLLBACK_INTERVAL: 'soon',
      CUSTODY_CHECKPOINT_PERIOD: '0',
      CUSTODY_AUDIT_RETENTION_DAYS: '0',
      CUSTODY_ROLLBACK_MIN_SAMPLE: 'lots',
      CUSTODY_POLICY_TIMEOUT_MS: '0',
      CUSTODY_DECISION_CACHE_TTL_S: '999999',
    };
    for (const [name, value] of Object.entries(bad)) {
      let err: unknown;
      try {
        readEnv({ [name]: value });
      } catch (e) {
        err = e;
      }
      expect(err, name).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).code, name).toBe('ERR_CONFIG');
      expect((err as Error).message, name).toContain(name);
    }
  });

  it('reads only the variables asked for', () => {
    expect(() => readEnv({ CUSTODY_POLICY_TIMEOUT_MS: 'soon' }, SERVER_ENV)).not.toThrow();
    expect(() => readEnv({ CUSTODY_POLICY_TIMEOUT_MS: 'soon' }, AGENT_ENV)).toThrow(/CUSTODY_POLICY_TIMEOUT_MS='soon'/);
    expect(() => readEnv({ CUSTODY_INGEST_MAX_BODY_BYTES: 'x' }, AGENT_ENV)).not.toThrow();
  });
});
