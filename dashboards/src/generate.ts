import fs from 'node:fs';
import path from 'node:path';
import { chainOfCustody } from './chain-of-custody';
import { toJson } from './common';
import { rolloutHealth } from './rollout-health';

/**
 * Writes the committed dashboards (dashboards/*.json) from their TypeScript definitions:
 * `npm run dashboards`. A test regenerates them and compares, so the JSON never drifts.
 */
export const DASHBOARD_FILES = {
  'rollout-health.json': rolloutHealth,
  'chain-of-custody.json': chainOfCustody,
} as const;

export function renderDashboards(): Record<string, string> {
  return Object.fromEntries(Object.entries(DASHBOARD_FILES).map(([file, build]) => [file, toJson(build())]));
}

/** dashboards/ beside package.json, from the source tree or from dist/. */
export function dashboardsDir(): string {
  for (const up of ['../..', '../../..']) {
    const root = path.resolve(__dirname, up);
    if (fs.existsSync(path.join(root, 'package.json'))) return path.join(root, 'dashboards');
  }
  throw new Error('package.json not found above ' + __dirname);
}

if (require.main === module) {
  const dir = dashboardsDir();
  for (const [file, json] of Object.entries(renderDashboards())) {
    fs.writeFileSync(path.join(dir, file), json);
    process.stdout.write(`wrote ${path.join(dir, file)}\n`);
  }
}
