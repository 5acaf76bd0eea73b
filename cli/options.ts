import path from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { bootstrapCredentialFile } from '../common/credentials';
import { DEFAULTS, ENV } from '../common/names';
import type { CommonOptions } from '../common/role';

export function portOption(flag: string, description: string, fallback: number): Option {
  return new Option(flag, description).default(fallback).argParser((v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n > 65535) throw new InvalidArgumentError(`'${v}' is not a port number (0-65535)`);
    return n;
  });
}

/** The flags every server command shares (README "Running"). */
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
 * `custody up` on loopback: a first day on one machine. Each of the admin and rollout credentials
 * that is not configured is generated once into `<data-dir>/admin-token` / `rollout-token` (mode
 * 0600), so that the rollback job (rollout only) and the person at the keyboard (admin) can act.
 * Returns the files generated or reused, or nothing off loopback.
 */
export function bootstrapCredentials(options: CommonOptions): { admin?: string; rollout?: string } {
  if (!LOOPBACK.test(options.host)) return {};
  const out: { admin?: string; rollout?: string } = {};
  for (const [key, name, file] of [
    ['admin', ENV.ADMIN_TOKEN, 'admin-token'],
    ['rollout', ENV.ROLLOUT_TOKEN, 'rollout-token'],
  ] as const) {
    if (process.env[name]) continue;
    const made = bootstrapCredentialFile(options.dataDir, file);
    process.env[name] = made.token;
    out[key] = made.file;
  }
  return out;
}

/** The admin credential alone (see bootstrapCredentials). */
export function bootstrapAdminToken(options: CommonOptions): string | undefined {
  return bootstrapCredentials(options).admin;
}
