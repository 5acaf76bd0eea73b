type Env = Record<string, string | undefined>;

/**
 * The arguments of a child_process call with the options' `env` replaced by `makeEnv(env)`.
 * Every function takes (command, args?, options?, callback?) or (command, options?, callback?):
 * the options sit after an optional args array, before an optional callback.
 */
export function withChildEnv(argv: readonly unknown[], makeEnv: (env: Env | undefined) => Env): unknown[] {
  const out = argv.slice();
  let i = 1;
  if (Array.isArray(out[i])) i++;
  else if (out[i] == null && i + 1 < out.length && isOptions(out[i + 1])) i++; // (cmd, undefined, options)
  if (isOptions(out[i])) {
    const options = out[i] as { env?: Env };
    out[i] = { ...options, env: makeEnv(options.env) };
  } else if (i < out.length && out[i] == null) {
    out[i] = { env: makeEnv(undefined) };
  } else {
    out.splice(i, 0, { env: makeEnv(undefined) });
  }
  return out;
}

function isOptions(v: unknown): boolean {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}
