import fs from 'node:fs';
import path from 'node:path';

/** The package version, reported as the instrumentation scope version. */
function readVersion(): string {
  // dist/instrumentation/ and instrumentation/ sit at different depths below the package root
  for (const rel of ['../../package.json', '../package.json']) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, rel), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'custody' && pkg.version) return pkg.version;
    } catch {
      /* try the next */
    }
  }
  return '0.0.0';
}

export const VERSION = readVersion();
