import type { ClientRequest } from 'node:http';

/** `Agent.prototype.addRequest(req, options)`: every request made through an agent. */
export type AddRequest = (this: unknown, req: ClientRequest, options: unknown, ...rest: unknown[]) => unknown;

/** node:http, as far as this instrumentation touches it (https.Agent inherits http.Agent's addRequest). */
export interface HttpModule {
  Agent: { prototype: { addRequest: AddRequest } };
}

/** What undici publishes on `undici:request:create` (Node's fetch and the undici package). */
export interface UndiciRequest {
  origin?: unknown;
  /** Flat [name, value, …] (undici 6+) or raw `name: value\r\n` lines (undici 5). */
  headers?: unknown;
  addHeader?(name: string, value: string): unknown;
}

export const UNDICI_REQUEST_CREATE = 'undici:request:create';
