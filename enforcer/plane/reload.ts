import fs from 'node:fs';
import path from 'node:path';
import { sha256Hex } from '../../common/canonical';
import type { Logger } from '../../common/log';
import { compilePolicyText, readPolicyFile, type Policy } from '../policy/compile';

export interface PolicySource {
  /** The policy in force. Requests read it once and keep that object, so a swap never splits one. */
  current(): Policy;
  /** How many policies have been loaded (1 after start). */
  generation(): number;
  /** Re-reads the file now; true when a new policy took effect. */
  reload(): Promise<boolean>;
  close(): void;
}

export interface WatchOptions {
  log: Logger;
  /** Called with each policy that takes effect, the first one included. */
  onLoad?: (policy: Policy, generation: number) => void;
  /** Called once per refused file content, with that content's hash ('' when it could not be read). */
  onError?: (err: Error, refused: { hash: string }) => void;
  /** Poll interval, for file systems where fs.watch says nothing (network mounts, some containers). Default 1000. */
  pollMs?: number;
  /** Wait this long after a change event before reading, so a file being written is read whole. Default 50. */
  debounceMs?: number;
}

/**
 * Loads the policy file and keeps it current: fs.watch on its directory (editors and config
 * managers replace files by rename) plus a stat poll as a fallback. A new file takes effect only
 * when it validates; a bad one is refused loudly (an error log and the onError hook, once per
 * distinct content) and the last good policy stays in force. The first load throws: a plane never
 * starts without a valid policy.
 */
export function watchPolicyFile(file: string, options: WatchOptions): PolicySource {
  const { log } = options;
  const pollMs = options.pollMs ?? 1000;
  const debounceMs = options.debounceMs ?? 50;
  let policy = readPolicyFile(file);
  let generation = 1;
  let lastBadHash: string | undefined;
  let lastStat = statKey(file);
  options.onLoad?.(policy, generation);

  let closed = false;
  let running: Promise<boolean> | undefined;
  let again = false;
  let timer: NodeJS.Timeout | undefined;

  async function readOnce(): Promise<boolean> {
    lastStat = statKey(file);
    let text: string;
    try {
      text = await fs.promises.readFile(file, 'utf8');
    } catch (err) {
      return refuse(`cannot read: ${(err as Error).message}`, `unreadable:${lastStat}`, err);
    }
    const hash = sha256Hex(text);
    if (hash === policy.hash) {
      lastBadHash = undefined;
      return false;
    }
    if (hash === lastBadHash) return false;
    let next: Policy;
    try {
      next = compilePolicyText(text, file);
    } catch (err) {
      return refuse((err as Error).message, hash, err);
    }
    policy = next;
    generation++;
    lastBadHash = undefined;
    log.info({ file, version: next.version, hash: next.hash.slice(0, 12), rules: next.ruleCount, generation }, 'policy reloaded');
    options.onLoad?.(next, generation);
    return true;
  }

  function refuse(message: string, key: string, cause: unknown): false {
    if (key !== lastBadHash) {
      lastBadHash = key;
      const err = new Error(message, { cause });
      log.error(
        { file, err: message, keptVersion: policy.version, keptHash: policy.hash.slice(0, 12) },
        `policy file refused; the last good policy (version ${policy.version}) stays in force`,
      );
      options.onError?.(err, { hash: key.startsWith('unreadable:') ? '' : key });
    }
    return false;
  }

  function reload(): Promise<boolean> {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      let changed = false;
      try {
        do {
          again = false;
          changed = (await readOnce()) || changed;
        } while (again && !closed);
      } finally {
        running = undefined;
      }
      return changed;
    })();
    return running;
  }

  function schedule(): void {
    if (closed) return;
    clearTimeout(timer);
    timer = setTimeout(() => void reload(), debounceMs);
    timer.unref();
  }

  const base = path.basename(file);
  let watcher: fs.FSWatcher | undefined;
  try {
    watcher = fs.watch(path.dirname(file), { persistent: false }, (_event, name) => {
      if (!name || name.toString() === base) schedule();
    });
    watcher.on('error', (err) => {
      log.warn({ file, err: err.message }, 'policy file watch failed; polling only');
      watcher?.close();
      watcher = undefined;
    });
  } catch (err) {
    log.warn({ file, err: (err as Error).message }, 'cannot watch the policy file; polling only');
  }
  const poll = setInterval(() => {
    if (statKey(file) !== lastStat) schedule();
  }, pollMs);
  poll.unref();

  return {
    current: () => policy,
    generation: () => generation,
    reload,
    close() {
      closed = true;
      clearTimeout(timer);
      clearInterval(poll);
      watcher?.close();
    },
  };
}

function statKey(file: string): string {
  try {
    const s = fs.statSync(file);
    return `${s.ino}:${s.size}:${s.mtimeMs}`;
  } catch {
    return 'missing';
  }
}
