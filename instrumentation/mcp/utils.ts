/**
 * The JSON-RPC method a request schema stands for: its `method` literal (zod 3 or 4, as the SDK
 * accepts both). undefined when it cannot be read.
 */
export function methodOfSchema(schema: unknown): string | undefined {
  const shape = (schema as { shape?: Record<string, unknown> } | undefined)?.shape;
  const method = shape?.method as { value?: unknown; _def?: { value?: unknown }; _zod?: { def?: { values?: unknown[] } } } | undefined;
  const value = method?.value ?? method?._def?.value ?? method?._zod?.def?.values?.[0];
  return typeof value === 'string' ? value : undefined;
}
