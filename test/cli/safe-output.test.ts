import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { safeJson, safeLines, safeText } from '../../common/terminal';
import { runCli, startCustody, type RunningCustody } from '../helpers/custody';

// What the CLI prints that came from agents cannot drive the terminal: a sponsor value that would
// clear the screen, retitle the window and print a fake verdict is shown escaped.

const FAKE = 'result: CLEAN — every period, chain and call verified';
// clear screen + home, a CR/LF and the fake verdict, an OSC window title, an 8-bit CSI, a bidi override
const EVIL_SPONSOR = `alice\x1b[2J\x1b[H\r\n${FAKE}\x1b]0;pwned\x07\u009b31m\u202eevil`;
const AGENT = 'mallory-1';

/** Nothing a terminal acts on, but the line breaks custody writes itself. */
function expectInert(text: string): void {
  // eslint-disable-next-line no-control-regex
  expect(text).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/);
  expect(text.split('\n').some((l) => l.trim() === FAKE || l.startsWith(FAKE))).toBe(false);
}

describe('common/terminal', () => {
  it('escapes C0, C1, DEL, CR/LF and bidi controls in a value; leaves printable text alone', () => {
    expect(safeText('plain — ünïcode ✓')).toBe('plain — ünïcode ✓');
    expect(safeText('a\x1b[2Jb')).toBe('a\\x1b[2Jb');
    expect(safeText('x\r\ny\tz')).toBe('x\\r\\ny\\tz');
    expect(safeText('\u009b\u007f\u202e\u2066\u2028')).toBe('\\x9b\\x7f\\u202e\\u2066\\u2028');
    expect(safeText(undefined)).toBe('');
    expect(safeText(42)).toBe('42');
  });

  it('keeps custody\'s own line breaks in safeLines, and the same JSON in safeJson', () => {
    expect(safeLines('one\x1b]0;t\x07\ntwo\r')).toBe('one\\x1b]0;t\\x07\ntwo\\r');
    const value = { s: EVIL_SPONSOR, n: [1, '\u202e'] };
    const json = safeJson(value, 2);
    expectInert(json);
    expect(JSON.parse(json)).toEqual(value);
  });
});

describe('the CLI on a crafted sponsor value', () => {
  let custody: RunningCustody;

  beforeAll(async () => {
    custody = await startCustody({ env: { CUSTODY_CHECKPOINTER: 'off' } });
    const t = BigInt(Date.now()) * 1_000_000n;
    const attrs = {
      'gen_ai.operation.name': 'execute_tool',
      'gen_ai.agent.id': AGENT,
      'custody.sponsor_id': EVIL_SPONSOR,
      'custody.tool_id': 'billing\x1b[8m',
      'custody.action': 'refund',
      'custody.purpose': `p\n${FAKE}`,
    };
    const body = {
      resourceSpans: [
        {
          resource: { attributes: [{ key: 'service.name', value: { stringValue: 'evil' } }] },
          scopeSpans: [
            {
              spans: [
                {
                  traceId: 'ab'.repeat(16),
                  spanId: 'cd'.repeat(8),
                  name: 'execute_tool billing',
                  startTimeUnixNano: String(t),
                  endTimeUnixNano: String(t + 1_000_000n),
                  attributes: Object.entries(attrs).map(([key, v]) => ({ key, value: { stringValue: v } })),
                },
              ],
            },
          ],
        },
      ],
    };
    const res = await fetch(`${custody.otlpUrl}/v1/traces`, { method: 'POST', body: JSON.stringify(body), headers: { 'Content-Type': 'application/json' } });
    expect(res.status).toBe(200);
  });

  afterAll(async () => {
    await custody?.stop();
  });

  it('custody audit trail shows the value escaped, the fake verdict on no line of its own', async () => {
    const r = await runCli(['audit', 'trail', AGENT, '--url', custody.url]);
    expect(r.code, r.stderr).toBe(0);
    expectInert(r.stdout);
    expect(r.stdout).toContain('sponsor alice\\x1b[2J\\x1b[H\\r\\nresult: CLEAN');
    expect(r.stdout).toContain('\\u202eevil');
    expect(r.stdout).toContain('billing\\x1b[8m.refund');
  }, 120_000);

  it('custody audit trail --json and custody export print JSON with the controls escaped, the same values parsed', async () => {
    const json = await runCli(['audit', 'trail', AGENT, '--json', '--url', custody.url]);
    expect(json.code, json.stderr).toBe(0);
    expectInert(json.stdout);
    expect(JSON.parse(json.stdout).sponsor_id).toBe(EVIL_SPONSOR);
    const exported = await runCli(['export', '--since', '1h', '--url', custody.url]);
    expect(exported.code, exported.stderr).toBe(0);
    expectInert(exported.stdout);
    expectInert(exported.stderr);
    const events = exported.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(events.map((e) => e.sponsor_id)).toContain(EVIL_SPONSOR);
  }, 120_000);

  it('an instance id with controls is refused, and nothing of it reaches the terminal raw', async () => {
    const r = await runCli(['audit', 'trail', `nobody\x1b[2J\r${FAKE}`, '--url', custody.url]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/agent_instance_id/);
    expectInert(r.stderr);
    expectInert(r.stdout);
  }, 120_000);
});
