import fs from 'node:fs';
import path from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { bootstrapCredentialFile } from '../common/credentials';
import { ConfigError } from '../common/errors';
import type { TlsSettings } from '../common/http';
import { CLI_ENV, SERVER_ENV, readEnv, type CustodyEnv } from '../common/env';
import { DEFAULTS, ENV } from '../common/names';
import type { CommonOptions } from '../common/role';

export function portOption(flag: string, description: string, fallback?: number): Option {
  const option = new Option(flag, description).argParser((v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n > 65535) throw new InvalidArgumentError(`'${v}' is not a port number (0-65535)`);
    return n;
  });
  return fallback === undefined ? option : option.default(fallback);
}

/** The flags every server command shares (README "Running"). */
export function withServerOptions(cmd: Command): Command {
  return cmd
    .option('--host <host>', 'address to listen on', DEFAULTS.HOST)
    .addOption(portOption('--port <port>', 'control API port', DEFAULTS.CONTROL_PORT))
    .addOption(portOption('--otlp-port <port>', 'OTLP/HTTP receiver port', DEFAULTS.OTLP_PORT))
    .addOption(
      portOption(
        '--otlp-grpc-port <port>',
        `OTLP/gRPC receiver port (default ${DEFAULTS.OTLP_GRPC_PORT}, or any free port when --otlp-port is 0; 0 turns gRPC off)`,
      ),
    )
    .option('--data-dir <dir>', 'embedded store and state directory', DEFAULTS.DATA_DIR)
    .option('--clickhouse-url <url>', `ClickHouse server URL instead of the embedded store (or $${ENV.CLICKHOUSE_URL})`)
    .option('--clickhouse-cluster <name>', `ClickHouse cluster: ON CLUSTER DDL, replicated tables (or $${ENV.CLICKHOUSE_CLUSTER})`)
    .option('--policy <file>', 'policy-config.yaml')
    .option('--token-config <file>', 'token-service-config.yml')
    .option('--otlp-url <url>', 'where roles report their events (default: this process\'s OTLP receiver)')
    .option('--policy-url <url>', `a policy plane in another process, for the rollout percent (or $${ENV.POLICY_URL})`)
    .option('--tls-cert <file>', 'serve the control API and OTLP/HTTP over TLS with this certificate (PEM; with --tls-key)')
    .option('--tls-key <file>', 'the private key of --tls-cert (PEM)')
    .option('--client-ca <file>', "ask TLS clients for certificates of this authority (PEM; custody's: GET /v1/certs/ca.pem): a client certificate is then the caller's identity");
}

export interface ServerFlags {
  host: string;
  port: number;
  otlpPort: number;
  /** Absent: the default (see grpcPortOf). */
  otlpGrpcPort?: number;
  dataDir: string;
  clickhouseUrl?: string;
  clickhouseCluster?: string;
  policy?: string;
  tokenConfig?: string;
  otlpUrl?: string;
  policyUrl?: string;
  tlsCert?: string;
  tlsKey?: string;
  clientCa?: string;
}

/** --tls-cert, --tls-key, --client-ca: read once at start; a missing or unreadable file names its flag. */
export function tlsSettingsOf(flags: Pick<ServerFlags, 'tlsCert' | 'tlsKey' | 'clientCa'>): TlsSettings | undefined {
  if (!flags.tlsCert && !flags.tlsKey) {
    if (flags.clientCa) throw new ConfigError('--client-ca needs --tls-cert and --tls-key: client certificates are asked for only over TLS');
    return undefined;
  }
  if (!flags.tlsCert || !flags.tlsKey) throw new ConfigError('give both --tls-cert and --tls-key');
  const read = (flag: string, file: string, marker: RegExp, expected: string) => {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError(`${flag} ${file}: cannot read: ${(err as Error).message}`);
    }
    if (!marker.test(text)) throw new ConfigError(`${flag} ${file}: not ${expected}`);
    return text;
  };
  return {
    cert: read('--tls-cert', flags.tlsCert, /-----BEGIN CERTIFICATE-----/, 'a PEM certificate'),
    key: read('--tls-key', flags.tlsKey, /-----BEGIN [A-Z ]*PRIVATE KEY-----/, 'a PEM private key'),
    ...(flags.clientCa ? { clientCa: read('--client-ca', flags.clientCa, /-----BEGIN CERTIFICATE-----/, 'PEM certificates') } : {}),
  };
}

/**
 * The OTLP/gRPC port to bind, from --otlp-grpc-port: 0 turns gRPC off (undefined); not given, 4317,
 * or any free port (0) when --otlp-port 0 asked for any free port for OTLP/HTTP, so that processes
 * started side by side that way (tests) do not fight over 4317.
 */
export function grpcPortOf(flags: Pick<ServerFlags, 'otlpPort' | 'otlpGrpcPort'>): number | undefined {
  if (flags.otlpGrpcPort === undefined) return flags.otlpPort === 0 ? 0 : DEFAULTS.OTLP_GRPC_PORT;
  return flags.otlpGrpcPort === 0 ? undefined : flags.otlpGrpcPort;
}

export function commonOptions(flags: ServerFlags, env: CustodyEnv): CommonOptions {
  const shownHost = flags.host.includes(':') ? `[${flags.host}]` : flags.host === '0.0.0.0' ? '127.0.0.1' : flags.host;
  const clickhouseUrl = flags.clickhouseUrl ?? env[ENV.CLICKHOUSE_URL];
  const clickhouseCluster = flags.clickhouseCluster ?? env[ENV.CLICKHOUSE_CLUSTER];
  const policyUrl = flags.policyUrl ?? env[ENV.POLICY_URL];
  const tls = tlsSettingsOf(flags);
  const scheme = tls ? 'https' : 'http';
  return {
    ...(tls ? { tls } : {}),
    host: flags.host,
    port: flags.port,
    otlpPort: flags.otlpPort,
    ...(grpcPortOf(flags) !== undefined ? { otlpGrpcPort: grpcPortOf(flags)! } : {}),
    dataDir: path.resolve(flags.dataDir),
    ...(clickhouseUrl ? { clickhouseUrl } : {}),
    ...(clickhouseCluster ? { clickhouseCluster } : {}),
    ...(flags.policy ? { policyFile: path.resolve(flags.policy) } : {}),
    ...(flags.tokenConfig ? { tokenConfigFile: path.resolve(flags.tokenConfig) } : {}),
    ...(policyUrl ? { policyUrl } : {}),
    publicUrl: `${scheme}://${shownHost}:${flags.port}`,
    otlpUrl: flags.otlpUrl ?? env.OTEL_EXPORTER_OTLP_ENDPOINT ?? `${scheme}://${shownHost}:${flags.otlpPort}`,
    otlpUrlGiven: flags.otlpUrl !== undefined,
  };
}

/**
 * The variables a client command reads (for its flags' defaults and credentials), parsed with
 * common/env.ts where the command starts: only those, so that a bad value of a variable one command
 * reads does not stop the others.
 */
export function cliEnv<N extends (typeof CLI_ENV)[number]>(...names: N[]): Pick<CustodyEnv, N> {
  return readEnv(process.env, names);
}

/**
 * The environment a server command hands its roles, parsed once as it starts: after
 * bootstrapCredentials (and the demo's rollback interval) have filled in what was missing.
 */
export function serverEnv(): CustodyEnv {
  return readEnv(process.env, SERVER_ENV);
}

/** Client commands (rollback, audit, token) talk to the control API at --url. */
export function withClientOptions(cmd: Command): Command {
  return cmd.option('--url <url>', `control API (default $${ENV.URL} or ${DEFAULTS.URL})`, cliEnv(ENV.URL)[ENV.URL] ?? DEFAULTS.URL);
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
