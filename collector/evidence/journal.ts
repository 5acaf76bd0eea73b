import fs from 'node:fs';
import path from 'node:path';
import type { JWK, JSONWebKeySet } from 'jose';
import { CustodyError } from '../../common/errors';
import { canonicalJson } from '../../common/canonical';
import { parseSignedCheckpoint, type SignedCheckpoint } from './record';

/**
 * The copy of every checkpoint outside the database: a directory with one file per checkpoint,
 * `<seq, 12 digits>.json`, created exclusively and never rewritten, plus `keys/<kid>.json`, the
 * public key of every signer, so the directory alone is enough to verify offline. Put it on
 * storage the database administrators cannot rewrite (another host, a WORM mount, an object store
 * with object lock, synced from here).
 */
const NAME = /^(\d{12})\.json$/;

export class CheckpointJournal {
  readonly dir: string;
  readonly keysDir: string;

  constructor(dir: string) {
    this.dir = path.resolve(dir);
    this.keysDir = path.join(this.dir, 'keys');
  }

  static fileName(seq: number): string {
    return `${String(seq).padStart(12, '0')}.json`;
  }

  fileFor(seq: number): string {
    return path.join(this.dir, CheckpointJournal.fileName(seq));
  }

  init(): void {
    fs.mkdirSync(this.keysDir, { recursive: true });
  }

  exists(): boolean {
    return fs.existsSync(this.dir);
  }

  /**
   * Writes a checkpoint's file, durably. Writing the same checkpoint again (a retry after a crash)
   * is a no-op; a different checkpoint under an existing seq is refused.
   */
  append(signed: SignedCheckpoint): string {
    const file = this.fileFor(signed.checkpoint.seq);
    const text = JSON.stringify(signed, null, 2) + '\n';
    let fd: number;
    try {
      fd = fs.openSync(file, 'wx', 0o444);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const existing = this.read(signed.checkpoint.seq);
      if (canonicalJson(existing) === canonicalJson(signed)) return file;
      throw new CustodyError('ERR_CHECKPOINT_EXISTS', `${file} already holds a different checkpoint ${signed.checkpoint.seq}; checkpoint files are never overwritten`);
    }
    try {
      fs.writeSync(fd, text);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    syncDir(this.dir);
    return file;
  }

  /** Publishes a public key beside the checkpoints (once per kid). */
  publishKey(jwk: JWK): void {
    if (!jwk.kid || !/^[A-Za-z0-9_-]+$/.test(jwk.kid)) throw new CustodyError('ERR_KEY_ID', `key id '${jwk.kid ?? ''}' cannot name a file`);
    const file = path.join(this.keysDir, `${jwk.kid}.json`);
    if (fs.existsSync(file)) return;
    try {
      fs.writeFileSync(file, JSON.stringify(jwk, null, 2) + '\n', { flag: 'wx', mode: 0o444 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }

  /** The public keys published in the directory, with the files that did not parse. */
  keys(): { jwks: JSONWebKeySet; problems: string[] } {
    const keys: JWK[] = [];
    const problems: string[] = [];
    if (!fs.existsSync(this.keysDir)) return { jwks: { keys }, problems };
    for (const name of fs.readdirSync(this.keysDir).sort()) {
      if (!name.endsWith('.json')) continue;
      try {
        const jwk = JSON.parse(fs.readFileSync(path.join(this.keysDir, name), 'utf8')) as JWK;
        if (typeof jwk.kid !== 'string' || `${jwk.kid}.json` !== name || jwk.d !== undefined) throw new Error('not a public JWK named for its kid');
        keys.push(jwk);
      } catch (err) {
        problems.push(`${path.join(this.keysDir, name)}: ${(err as Error).message}`);
      }
    }
    return { jwks: { keys }, problems };
  }

  /** The checkpoint numbers present, ascending, and any other files found. */
  list(): { seqs: number[]; strays: string[] } {
    const seqs: number[] = [];
    const strays: string[] = [];
    if (!fs.existsSync(this.dir)) return { seqs, strays };
    for (const entry of fs.readdirSync(this.dir, { withFileTypes: true })) {
      const m = NAME.exec(entry.name);
      if (m && entry.isFile()) seqs.push(Number(m[1]));
      else if (entry.name !== 'keys') strays.push(entry.name);
    }
    seqs.sort((a, b) => a - b);
    return { seqs, strays };
  }

  read(seq: number): SignedCheckpoint {
    const file = this.fileFor(seq);
    let value: unknown;
    try {
      value = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (err) {
      throw new CustodyError('ERR_CHECKPOINT_FILE', `${file}: ${(err as Error).message}`);
    }
    try {
      return parseSignedCheckpoint(value, file);
    } catch (err) {
      throw new CustodyError('ERR_CHECKPOINT_FILE', (err as Error).message);
    }
  }

  last(): SignedCheckpoint | undefined {
    const { seqs } = this.list();
    return seqs.length ? this.read(seqs[seqs.length - 1]!) : undefined;
  }
}

function syncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // some filesystems refuse fsync on a directory; the file itself is synced
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
