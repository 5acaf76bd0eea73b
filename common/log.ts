import pino from 'pino';
import { ENV } from './names';

export type Logger = pino.Logger;

/** Structured JSON logs on stderr; stdout stays for command output. */
export function createLogger(name: string, level = process.env[ENV.LOG_LEVEL] ?? 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination(2));
}
