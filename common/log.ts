import pino from 'pino';

export type Logger = pino.Logger;

/** Structured JSON logs on stderr; stdout stays for command output. */
/** `level`: $CUSTODY_LOG_LEVEL as the caller's edge read it (common/env.ts), else info. */
export function createLogger(name: string, level: string = 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination(2));
}
