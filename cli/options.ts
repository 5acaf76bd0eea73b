import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { DEFAULTS, ENV } from '../common/names';
import type { CommonOptions } from '../common/role';

export function portOption(flag: string, description: string, fallback: number): Option {
  return new Option(flag, description).default(fallback).argParser((v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n > 65535) throw new InvalidArgumentError(`'${v}' is not a port number (0-65535)`);
    return n;
  });
}

/** The flags every server command shares (CONTRACT.md, "Common flags"). */
export function withServerOptions(cmd: Command): Command {
  return cmd
    .option('--host <host>', 'address to listen on', DEFAULTS.HOST)
    .addOption(portOption('--port <port>', 'control API port', DEFAULTS.CONTROL_PORT))
    .addOption(portOption('--otlp-port <port>', 'OTLP/HTTP receiver port', DEFAULTS.OTLP_PORT))
    .option('--data-dir <dir>', 'embedded store and state directory', DEFAULTS.DATA_DIR)
    .option('--clickhouse-url <url>', `ClickHouse server URL instead of the embedded store (or $${ENV.CLICKHOUSE_URL})`)
    .option('--clickhouse-cluster <name>', `ClickHouse cluster: ON CLUSTER DDL, replicated tables (or $${ENV.CLICKHOUSE_CLUSTER})`)
    .option('--policy <file>', 'policy-config.yaml')
    .option('--token-config <file>', 'token-service-config.yml')
    .option('--otlp-url <url>', 'where roles report their events (default: this process\'s OTLP receiver)')
    .option('--policy-url <url>', `a policy plane in another process, for the rollout percent (or $${ENV.POLICY_URL})`);
}

export interface ServerFlags {
  host: string;
  port: number;
  otlpPort: number;
  dataDir: string;
  clickhouseUrl?: string;
  clickhouseCluster?: string;
  policy?: string;
  tokenConfig?: string;
  otlpUrl?: string;
  policyUrl?: string;
}

export function commonOptions(flags: ServerFlags): CommonOptions {
  const shownHost = flags.host.includes(':') ? `[${flags.host}]` : flags.host === '0.0.0.0' ? '127.0.0.1' : flags.host;
  const clickhouseUrl = flags.clickhouseUrl ?? process.env[ENV.CLICKHOUSE_URL];
  const clickhouseCluster = flags.clickhouseCluster ?? process.env[ENV.CLICKHOUSE_CLUSTER];
  return {
    host: flags.host,
    port: flags.port,
    otlpPort: flags.otlpPort,
    dataDir: path.resolve(flags.dataDir),
    ...(clickhouseUrl ? { clickhouseUrl } : {}),
    ...(clickhouseCluster ? { clickhouseCluster } : {}),
    ...(flags.policy ? { policyFile: path.resolve(flags.policy) } : {}),
    ...(flags.tokenConfig ? { tokenConfigFile: path.resolve(flags.tokenConfig) } : {}),
    ...((flags.policyUrl ?? process.env[ENV.POLICY_URL]) ? { policyUrl: flags.policyUrl ?? process.env[ENV.POLICY_URL]! } : {}),
    publicUrl: `http://${shownHost}:${flags.port}`,
    otlpUrl: flags.otlpUrl ?? process.env.OTEL_EXPORTER_OTLP_ENDPOINT ?? `http://${shownHost}:${flags.otlpPort}`,
    otlpUrlGiven: flags.otlpUrl !== undefined,
  };
}

/** Client commands (rollback, audit, token) talk to the control API at --url. */
export function withClientOptions(cmd: Command): Command {
  return cmd.option('--url <url>', `control API (default $${ENV.URL} or ${DEFAULTS.URL})`, process.env[ENV.URL] ?? DEFAULTS.URL);
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

/**
 * `custody up` on loopback with no admin token configured: a first day on one machine. Generates
 * one (kept in `<data-dir>/admin-token`, mode 0600) so that the rollback job and the person at the
 * keyboard can move the rollout. Returns the file, or undefined when nothing was done.
 */
export function bootstrapAdminToken(options: CommonOptions): string | undefined {
  if (process.env[ENV.ADMIN_TOKEN] || !LOOPBACK.test(options.host)) return undefined;
  const file = path.join(options.dataDir, 'admin-token');
  let token = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim() : '';
  if (!token) {
    fs.mkdirSync(options.dataDir, { recursive: true });
    token = randomBytes(24).toString('base64url');
    fs.writeFileSync(file, `${token}\n`, { mode: 0o600 });
  }
  process.env[ENV.ADMIN_TOKEN] = token;
  return file;
}
