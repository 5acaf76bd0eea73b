// The public API of the `custody` package.
export * from './common/names';
export { CustodyError, HttpError, ConfigError } from './common/errors';
