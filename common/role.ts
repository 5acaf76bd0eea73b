import type { TlsSettings } from './http';
import type { Router } from 'express';
import type { CustodyEnv } from './env';
import type { FastRoutes } from './fast-route';
import type { Logger } from './log';
import type { Reporter } from './report';

/**
 * What a server role (collector, token service, policy plane, rollback job) gets from the process
 * that hosts it: `custody up` hosts them all, `custody <role>` hosts one. Each role mounts its
 * control-API routes on `control`, adds its readiness checks and returns a handle to stop it.
 */
export interface RoleContext {
  /** Control API (default :8080) router; routes are mounted at the public surface's paths. */
  readonly control: Router;
  /** Hot-path JSON routes on the same port, served before Express (POST /v1/check). */
  readonly fast: FastRoutes;
  readonly log: Logger;
  /** Reports events (token issuance, decisions, rollout changes) to the collector over OTLP. */
  readonly reporter: Reporter;
  /**
   * Readiness checks behind /readyz: every one must resolve true (or `ok: true`); a `detail`
   * is shown beside the result (why not ready, or what is degraded while still ready).
   */
  addReadinessCheck(name: string, check: () => Promise<ReadinessResult> | ReadinessResult): void;
  /** Shared flags from the command line. */
  readonly options: CommonOptions;
  /** The environment, parsed once by the host (common/env.ts): roles read their variables here, never process.env. */
  readonly env: CustodyEnv;
  /**
   * In-process services one role offers another when `custody up` hosts both (the token service's
   * key set for the policy plane, the policy plane's rollout state for the collector). A role that
   * finds none falls back to HTTP against the configured URL.
   */
  readonly services: Services;
  /** The collector calls this once its OTLP receiver is bound (the port may have been 0). */
  setOtlpUrl(url: string): void;
}

export type ReadinessResult = boolean | { ok: boolean; detail?: string };

export interface Services {
  provide<T>(name: string, value: T): void;
  lookup<T>(name: string): T | undefined;
}

/** Names of in-process services. */
export const SERVICE = {
  /** `() => JSONWebKeySet` and `issuer`: the token service's public keys. */
  TOKEN_KEYS: 'token-keys',
  /** `{ get(): Promise<{ percent: number }> }`: the policy plane's rollout state. */
  ROLLOUT: 'rollout',
  /** A SpanExporter into the collector's store: where the hosted roles' records go in process. */
  SERVICE_SINK: 'service-sink',
  /** `{ authenticate(credential) }`: the token service's agent registry, to check agents' OTLP credentials. */
  AGENT_CREDENTIALS: 'agent-credentials',
} as const;

export interface CommonOptions {
  host: string;
  port: number;
  otlpPort: number;
  /** OTLP/gRPC receiver port: 0 any free port; absent, no gRPC receiver. */
  otlpGrpcPort?: number;
  dataDir: string;
  clickhouseUrl?: string;
  /** ClickHouse cluster for ON CLUSTER DDL and replicated tables (server storage only). */
  clickhouseCluster?: string;
  /** A policy plane in another process (the collector reads the rollout percent there). */
  policyUrl?: string;
  policyFile?: string;
  tokenConfigFile?: string;
  /** Base URL of the control API as agents see it. */
  publicUrl: string;
  /** OTLP base URL as reporters see it. */
  otlpUrl: string;
  /** true when --otlp-url chose it: the collector's own port does not override it. */
  otlpUrlGiven?: boolean;
  /** --tls-cert/--tls-key/--client-ca: the control API and OTLP/HTTP are served over TLS. */
  tls?: TlsSettings;
}

export interface RunningRole {
  readonly name: string;
  /** Lines printed at start (URLs, mode) for people. */
  readonly banner?: string[];
  close(): Promise<void>;
}

/** Starts one role inside a host process (`custody up` or a single-role command). */
export type RoleStarter = (ctx: RoleContext) => Promise<RunningRole>;
