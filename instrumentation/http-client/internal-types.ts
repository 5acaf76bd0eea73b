import type { ClientRequest } from 'node:http';

/** node:http / node:https, as far as this instrumentation touches them. */
export type RequestFunction = (...args: unknown[]) => ClientRequest;
export interface HttpModule {
  request: RequestFunction;
  get: RequestFunction;
}

/** What undici publishes on `undici:request:create` (Node's fetch and the undici package). */
export interface UndiciRequest {
  origin?: unknown;
  /** Flat [name, value, …] (undici 6+) or raw `name: value\r\n` lines (undici 5). */
  headers?: unknown;
  addHeader?(name: string, value: string): unknown;
}

export const UNDICI_REQUEST_CREATE = 'undici:request:create';
