import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { METRIC, THRESHOLDS } from '../../common/names';

const ROOT = path.resolve(__dirname, '../..');
const RULES = path.join(ROOT, 'alerts/custody.rules.yml');
const TESTS = path.join(ROOT, 'alerts/custody.rules.test.yml');

const hasPromtool = spawnSync('promtool', ['--version']).status === 0;
if (!hasPromtool) console.warn('promtool not found: alert rule tests skipped (apt-get install prometheus)');

interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
}

const groups = (parse(fs.readFileSync(RULES, 'utf8')) as { groups: { name: string; rules: Rule[] }[] }).groups;
const rules = groups.flatMap((g) => g.rules);
const byName = (name: string) => rules.find((r) => r.alert === name)!;

describe('alert rules file', () => {
  it('has the alerts the contract asks for, at the contract thresholds', () => {
    expect(byName('CustodyMissingSponsor').expr).toContain(`${METRIC.MISSING_SPONSOR_RATIO}) > ${THRESHOLDS.missing_sponsor_ratio}`);
    expect(byName('CustodyPolicyLatencyP95High').expr).toContain(`> ${THRESHOLDS.alert_policy_latency_p95_ms / 1000}`);
    expect(byName('CustodyPolicyLatencyP95Rollback').expr).toContain(`> ${THRESHOLDS.policy_latency_p95_ms / 1000}`);
    expect(byName('CustodyPolicyErrorRate').expr).toContain(`${METRIC.POLICY_ERROR_RATE}) > ${THRESHOLDS.policy_error_rate}`);
    expect(byName('CustodyTokenIssueFailures').expr).toContain(`${METRIC.TOKEN_ISSUE_FAILURE_RATIO}) > ${THRESHOLDS.token_issue_failure_ratio}`);
    expect(byName('CustodyRollbackRuleBreached').expr).toContain(METRIC.ROLLBACK_RULE_BREACHED);
    expect(byName('CustodyRolledBack').expr).toContain(METRIC.ROLLOUT_PERCENT);
    expect(byName('CustodyIngestRejecting').expr).toContain(METRIC.SPANS_REJECTED_TOTAL);
    expect(byName('CustodyScrapeDown').expr).toMatch(/^up\{/);
    for (const r of rules) expect(r.labels?.severity, r.alert).toMatch(/^(warning|critical)$/);
  });
});

describe.skipIf(!hasPromtool)('promtool (apt-get install prometheus)', () => {
  it('check rules accepts the file', () => {
    const out = execFileSync('promtool', ['check', 'rules', RULES], { encoding: 'utf8' });
    expect(out).toMatch(new RegExp(`SUCCESS: ${rules.length} rules found`));
  });

  it('test rules passes every unit test, and every alert has one', () => {
    const r = spawnSync('promtool', ['test', 'rules', TESTS], { encoding: 'utf8' });
    expect(r.stdout + r.stderr).toMatch(/SUCCESS/);
    expect(r.status).toBe(0);
    const tested = new Set(
      (parse(fs.readFileSync(TESTS, 'utf8')) as { tests: { alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[] }[] }).tests.flatMap(
        (t) => (t.alert_rule_test ?? []).filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname),
      ),
    );
    for (const r of rules) expect(tested.has(r.alert), `${r.alert} has a firing unit test`).toBe(true);
  });

  it('the unit tests can fail: a shifted threshold is caught', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-alerts-'));
    try {
      fs.writeFileSync(path.join(dir, 'custody.rules.yml'), fs.readFileSync(RULES, 'utf8').replace('custody_policy_error_rate) > 0.01', 'custody_policy_error_rate) > 0.05'));
      fs.copyFileSync(TESTS, path.join(dir, 'custody.rules.test.yml'));
      const r = spawnSync('promtool', ['test', 'rules', path.join(dir, 'custody.rules.test.yml')], { encoding: 'utf8' });
      expect(r.status).not.toBe(0);
      expect(r.stdout + r.stderr).toMatch(/CustodyPolicyErrorRate/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
