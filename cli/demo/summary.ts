/** What the live summary shows: counts from /metrics, rules and rollout from the rollback status. */
export interface Snapshot {
  calls: number;
  allow: number;
  deny: number;
  failClosed: number;
  shadow: number;
  rules: { rule: string; value: number | null; threshold: number; breached: boolean }[];
  action: string;
  sampleSize: number;
  rolloutPercent: number | null;
}

/** Sums `custody_tool_calls_total{tool,decision,cohort}` from a Prometheus exposition. */
export function callCounts(exposition: string): Pick<Snapshot, 'calls' | 'allow' | 'deny' | 'failClosed' | 'shadow'> {
  const out = { calls: 0, allow: 0, deny: 0, failClosed: 0, shadow: 0 };
  for (const line of exposition.split('\n')) {
    const m = /^custody_tool_calls_total\{([^}]*)\} (\S+)$/.exec(line);
    if (!m) continue;
    const labels = Object.fromEntries([...m[1]!.matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    const n = Number(m[2]);
    out.calls += n;
    if (labels.cohort === 'baseline') out.shadow += n;
    if (labels.decision === 'allow') out.allow += n;
    else if (labels.decision === 'deny') out.deny += n;
    else if (labels.decision === 'error') out.failClosed += n;
  }
  return out;
}

const fmt = (rule: string, v: number | null): string => {
  if (v === null) return '   n/a';
  return rule.endsWith('_ms') ? `${v.toFixed(0).padStart(4)} ms` : `${(v * 100).toFixed(2).padStart(5)} %`;
};

export function renderSnapshot(s: Snapshot, phase: string): string[] {
  const lines = [
    `phase       ${phase}`,
    `tool calls  ${s.calls}  allowed ${s.allow}  denied ${s.deny}  failed closed ${s.failClosed}  (in shadow ${s.shadow})`,
    `rollout     ${s.rolloutPercent === null ? 'unknown' : `${s.rolloutPercent} %`} canary   rules say: ${s.action} (${s.sampleSize} canary calls in window)`,
  ];
  for (const r of s.rules) {
    const threshold = r.rule.endsWith('_ms') ? `${r.threshold} ms` : `${(r.threshold * 100).toFixed(1)} %`;
    lines.push(`  ${r.rule.padEnd(24)} ${fmt(r.rule, r.value)}  (roll back above ${threshold})${r.breached ? '  BREACHED' : ''}`);
  }
  return lines;
}
