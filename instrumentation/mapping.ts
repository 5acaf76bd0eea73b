import fs from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { parseConfigText } from '../common/config';
import { ConfigError } from '../common/errors';
import { resolveToolName } from '../enforcer/policy/tool-map';

/**
 * Which policy tool and action a framework's tool name stands for. `billing.refund` is tool
 * `billing`, action `refund`; other names go through the policy's `tool_map` (the plane's, fetched
 * by the enforcer, or a local one from CUSTODY_TOOL_MAP); a name found nowhere is its own tool with
 * action `call`, so it is still gated (default deny) and audited. The resolution itself is the
 * policy's (enforcer/policy/tool-map.ts); this module reads the local table.
 */
export interface ToolTarget {
  tool: string;
  action: string;
}

/** name → { tool, action? } */
export type ToolMap = Readonly<Record<string, { tool: string; action?: string | undefined }>>;

export interface MapOverrides {
  tool?: string | undefined;
  action?: string | undefined;
}

const NAME = z.string().trim().min(1, 'must be a non-empty string');

/** An entry: `{ tool, action? }` as in policy-config.yaml, or the short `"tool.action"` / `"tool"`. */
const ENTRY = z.union([
  NAME.transform((s) => {
    const dot = s.indexOf('.');
    return dot > 0 && dot < s.length - 1 ? { tool: s.slice(0, dot), action: s.slice(dot + 1) } : { tool: s };
  }),
  z.strictObject({ tool: NAME, action: NAME.optional() }),
]);

export const TOOL_MAP_SCHEMA = z.record(NAME, ENTRY);

/** A policy config carries its map under `tool_map`; the rest of the file is the plane's business. */
const POLICY_WITH_MAP = z.looseObject({ tool_map: TOOL_MAP_SCHEMA.optional() });

/** Pure: the target of `name` under `map`, explicit overrides first. */
export function mapTool(name: string, map: ToolMap | undefined, overrides: MapOverrides = {}): ToolTarget {
  const ref = resolveToolName(name, map);
  return { tool: overrides.tool ?? ref.tool, action: overrides.action ?? ref.action };
}

/**
 * CUSTODY_TOOL_MAP: inline JSON (`{"lookup_invoice":"billing.read"}`) or a path to a JSON/YAML
 * file — either a bare map or a policy config with a `tool_map` section.
 */
export function loadToolMap(source: string): ToolMap {
  const text = source.trimStart();
  if (text.startsWith('{')) return parseToolMapText(text, 'CUSTODY_TOOL_MAP');
  let content: string;
  try {
    content = fs.readFileSync(source, 'utf8');
  } catch (err) {
    throw new ConfigError(`${source}: cannot read the tool map: ${(err as Error).message}`, { cause: err });
  }
  return parseToolMapText(content, source);
}

export function parseToolMapText(text: string, origin: string): ToolMap {
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch {
    raw = undefined; // parseConfigText reports where
  }
  const isPolicy = raw !== null && typeof raw === 'object' && !Array.isArray(raw) && ('tool_map' in raw || 'rules' in raw);
  if (isPolicy) return (parseConfigText(text, origin, POLICY_WITH_MAP).tool_map ?? {}) as ToolMap;
  return parseConfigText(text, origin, TOOL_MAP_SCHEMA) as ToolMap;
}
