import type { Router } from 'express';
import type { Logger } from './log';
import type { Reporter } from './report';

/**
 * What a server role (collector, token service, policy plane, rollback job) gets from the process
 * that hosts it: `custody up` hosts them all, `custody <role>` hosts one. Each role mounts its
 * control-API routes on `control`, adds its readiness checks and returns a handle to stop it.
 */
export interface RoleContext {
  /** Control API (default :8080) router; routes are mounted at the paths in CONTRACT.md. */
  readonly control: Router;
  readonly log: Logger;
  /** Reports events (token issuance, decisions, rollout changes) to the collector over OTLP. */
  readonly reporter: Reporter;
  /** Readiness checks behind /readyz: every one must resolve true. */
  addReadinessCheck(name: string, check: () => Promise<boolean> | boolean): void;
  /** Shared flags from the command line. */
  readonly options: CommonOptions;
}

export interface CommonOptions {
  host: string;
  port: number;
  otlpPort: number;
  dataDir: string;
  clickhouseUrl?: string;
  policyFile?: string;
  tokenConfigFile?: string;
  /** Base URL of the control API as agents see it. */
  publicUrl: string;
  /** OTLP base URL as reporters see it. */
  otlpUrl: string;
}

export interface RunningRole {
  readonly name: string;
  /** Lines printed at start (URLs, mode) for people. */
  readonly banner?: string[];
  close(): Promise<void>;
}
