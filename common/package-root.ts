import fs from 'node:fs';
import path from 'node:path';

/**
 * The custody package's own directory (holding its package.json), found by walking up from `from`:
 * the same answer from the source tree and from dist/, whatever folder depth a module sits at.
 */
export function packageRoot(from = __dirname): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const pkg = path.join(dir, 'package.json');
    if (fs.existsSync(pkg)) {
      try {
        if ((JSON.parse(fs.readFileSync(pkg, 'utf8')) as { name?: string }).name === 'custody') return dir;
      } catch {
        /* not ours */
      }
    }
    if (path.dirname(dir) === dir) throw new Error(`the custody package.json was not found above ${from}`);
  }
}
