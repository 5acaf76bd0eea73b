// Turns the OpenTelemetry Collector's own component schemas (the config.schema.yaml files that
// opentelemetry-collector and opentelemetry-collector-contrib generate from their Go config structs
// with cmd/schemagen) into one JSON Schema for ajv, holding only the components custody's
// Collector configs use.
//
// - $ref is resolved in the three forms schemagen writes (a bare name in the file's $defs,
//   `/dir/pkg.name` and `./dir/pkg.name` in the same repository, `go.opentelemetry.io/collector/...`
//   or `github.com/open-telemetry/opentelemetry-collector-contrib/...` across them). A reference
//   whose file is not at hand is opened ({}) and listed in the output's $comment.
// - allOf entries are squashed structs (`mapstructure:",squash"`): their properties are merged
//   into the parent, as confmap decodes them.
// - Objects with declared properties refuse other keys (additionalProperties: false). The upstream
//   files do not say so, but the Collector does: confmap decodes with ErrorUnused, so a key no
//   struct field takes stops it at start.
// - `format: duration` (Go time.Duration) becomes a pattern for Go duration strings (ajv-formats
//   reads "duration" as ISO 8601); descriptions and the x- annotations are dropped.
// - Known mistakes of schemagen are corrected, each with its reason (CORRECTIONS), and components
//   with no upstream schema get a hand-written stand-in, marked as such (STAND_INS).
//
// usage: node extract-otelcol.mjs <collector-dir> <collector-rev> <contrib-dir> > otelcol-components.schema.json
//   <collector-dir>, <contrib-dir>: trees holding the repositories' config.schema.yaml files
//   (a checkout, or `git archive <rev> | tar -x --wildcards '*config.schema.yaml'`).
import fs from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';

const [coreDir, coreRev, contribDir] = process.argv.slice(2);
if (!contribDir) throw new Error('usage: node extract-otelcol.mjs <collector-dir> <collector-rev> <contrib-dir>');

const CORE_MODULE = 'go.opentelemetry.io/collector/';
const CONTRIB_MODULE = 'github.com/open-telemetry/opentelemetry-collector-contrib/';
const ROOTS = { core: coreDir, contrib: contribDir };

// The contrib repository is too large to take whole here; each file was read at the commit named.
const CONTRIB_COMMITS = {
  'exporter/elasticsearchexporter': '0e95696d2b4f3a88a799f91a56da80567bf4bcfb',
  'exporter/splunkhecexporter': '01f84865d4ea8dde99feec2f9b2d02a6f1097eb4',
  'pkg/translator/splunk': '36ee7b2b936ce5c8baa144e5987efa1b587d0adb',
  'pkg/datadog/config': '2f934264f28a0df4998e6ddb64cae264252addf8',
  'processor/tailsamplingprocessor': '048c7a088a874a1c282d390f36c24eb2290d3047',
  'extension/healthcheckextension': '96ffab6b149f95ea1ade906b655243db892075a8',
};

/** Component type -> [repository, package dir, def name or undefined for the file's root]. */
const COMPONENTS = {
  extensions: {
    health_check: ['contrib', 'extension/healthcheckextension'],
    file_storage: ['contrib', 'extension/storage/filestorage'],
  },
  receivers: {
    otlp: ['core', 'receiver/otlpreceiver'],
  },
  processors: {
    memory_limiter: ['core', 'processor/memorylimiterprocessor'],
    batch: ['core', 'processor/batchprocessor'],
    tail_sampling: ['contrib', 'processor/tailsamplingprocessor'],
  },
  exporters: {
    otlphttp: ['core', 'exporter/otlphttpexporter'],
    elasticsearch: ['contrib', 'exporter/elasticsearchexporter'],
    splunk_hec: ['contrib', 'exporter/splunkhecexporter'],
    // the datadog exporter's Config is pkg/datadog/config.Config; the exporter has no schema file of its own
    datadog: ['contrib', 'pkg/datadog/config', 'config'],
  },
};

// Where a schema says less than the Go code decodes. schemagen writes every embedded struct as an
// allOf entry, also one with a key of its own (`mapstructure:"retry_on_failure"`), which confmap
// decodes under that key, not squashed; and it cannot see a type's own Unmarshal.
const unsquash = (ref, key) => (node) => {
  const i = (node.allOf ?? []).findIndex((m) => m.$ref === ref);
  if (i < 0) return false; // fixed upstream
  node.allOf.splice(i, 1);
  node.properties = { ...node.properties, [key]: { $ref: ref } };
  return true;
};
const CORRECTIONS = [
  {
    at: ['contrib', 'pkg/datadog/config', 'config'],
    apply: unsquash('go.opentelemetry.io/collector/config/configretry.back_off_config', 'retry_on_failure'),
    why: 'retry_on_failure: pkg/datadog/config/config.go embeds configretry.BackOffConfig `mapstructure:"retry_on_failure"`',
  },
  {
    at: ['contrib', 'exporter/elasticsearchexporter', undefined],
    apply: unsquash('telemetry_settings', 'telemetry'),
    why: 'telemetry: exporter/elasticsearchexporter/config.go embeds TelemetrySettings `mapstructure:"telemetry"`',
  },
  {
    at: ['core', 'config/configopaque', 'map_list'],
    apply: (node) => {
      if (node.anyOf) return false;
      const list = { ...node };
      for (const k of Object.keys(node)) delete node[k];
      node.anyOf = [list, { type: 'object', additionalProperties: { $ref: 'string' } }];
      return true;
    },
    why: 'also a map: config/configopaque/maplist.go MapList.Unmarshal takes {name: value}',
  },
];

// Hand-written, for what has no config.schema.yaml upstream. Same form as schemagen's output.
const STAND_INS = {
  // extension/healthcheckextension/config.schema.yaml refers to internal/healthcheck.config, whose
  // schema file does not exist upstream: written from internal/healthcheck/config.go (01c8134) and
  // internal/healthcheck/internal/http/config.go (404b362). grpc and component_health are left open.
  'contrib:internal/healthcheck': {
    $defs: {
      config: {
        type: 'object',
        properties: {
          path: { type: 'string' },
          response_body: { type: 'object', properties: { healthy: { type: 'string' }, unhealthy: { type: 'string' } } },
          check_collector_pipeline: {
            type: 'object',
            properties: { enabled: { type: 'boolean' }, interval: { type: 'string' }, exporter_failure_threshold: { type: 'integer' } },
          },
          use_v2: { type: 'boolean' },
          http: { $ref: 'http_config' },
          grpc: { type: 'object' },
          component_health: { type: 'object' },
        },
        allOf: [{ $ref: 'go.opentelemetry.io/collector/config/confighttp.server_config' }],
      },
      http_config: {
        type: 'object',
        properties: { config: { $ref: 'path_config' }, status: { $ref: 'path_config' } },
        allOf: [{ $ref: 'go.opentelemetry.io/collector/config/confighttp.server_config' }],
      },
      path_config: {
        type: 'object',
        properties: { enabled: { type: 'boolean' }, path: { type: 'string' }, include_attributes: { type: 'boolean' }, verbose: { type: 'boolean' } },
      },
    },
  },
  // extension/storage/filestorage has no config.schema.yaml upstream: keys from its config.go
  // (4f70196: directory, timeout, compaction, fsync) and the later create_directory,
  // directory_permissions, recreate and compaction.cleanup_on_start from its README.
  'contrib:extension/storage/filestorage': {
    $defs: {
      compaction_config: {
        type: 'object',
        properties: {
          check_interval: { type: 'string', format: 'duration' },
          cleanup_on_start: { type: 'boolean' },
          directory: { type: 'string' },
          max_transaction_size: { type: 'integer' },
          on_rebound: { type: 'boolean' },
          on_start: { type: 'boolean' },
          rebound_needed_threshold_mib: { type: 'integer' },
          rebound_trigger_threshold_mib: { type: 'integer' },
        },
      },
    },
    type: 'object',
    properties: {
      compaction: { $ref: 'compaction_config' },
      create_directory: { type: 'boolean' },
      directory: { type: 'string' },
      directory_permissions: { type: 'string' },
      fsync: { type: 'boolean' },
      recreate: { type: 'boolean' },
      timeout: { type: 'string', format: 'duration' },
    },
  },
};

const GO_DURATION = '^[-+]?(0|(\\d+(\\.\\d*)?|\\.\\d+)(ns|us|µs|ms|s|m|h))+$';

const files = new Map();
const used = { upstream: new Set(), standIn: new Set(), opened: new Set(), corrected: [], dropped: new Set() };

function load(repo, dir) {
  const id = `${repo}:${dir}`;
  if (files.has(id)) return files.get(id);
  const file = path.join(ROOTS[repo], dir, 'config.schema.yaml');
  let doc;
  if (fs.existsSync(file)) {
    doc = parse(fs.readFileSync(file, 'utf8'));
    used.upstream.add(id);
  } else if (STAND_INS[id]) {
    doc = structuredClone(STAND_INS[id]);
    used.standIn.add(id);
  }
  files.set(id, doc);
  return doc;
}

/** Where a $ref written in (repo, dir) points: { repo, dir, name }. */
function locate(ref, from) {
  if (!/[./]/.test(ref)) return { repo: from.repo, dir: from.dir, name: ref };
  const dot = ref.lastIndexOf('.');
  const [pkg, name] = [ref.slice(0, dot), ref.slice(dot + 1)];
  if (pkg.startsWith(CORE_MODULE)) return { repo: 'core', dir: pkg.slice(CORE_MODULE.length), name };
  if (pkg.startsWith(CONTRIB_MODULE)) return { repo: 'contrib', dir: pkg.slice(CONTRIB_MODULE.length), name };
  if (pkg.startsWith('/')) return { repo: from.repo, dir: pkg.slice(1), name };
  if (pkg.startsWith('./')) return { repo: from.repo, dir: path.posix.join(from.dir, pkg.slice(2)), name };
  throw new Error(`unknown $ref form ${ref} in ${from.repo}:${from.dir}`);
}

const defKey = ({ repo, dir, name }) => [repo === 'core' ? 'collector' : 'contrib', ...dir.split('/'), name ?? 'Config'].join('.');

function rawDef(loc) {
  const doc = load(loc.repo, loc.dir);
  if (!doc) return undefined;
  const node = loc.name === undefined ? doc : doc.$defs?.[loc.name];
  if (!node) return undefined;
  for (const c of CORRECTIONS) {
    if (c.at[0] !== loc.repo || c.at[1] !== loc.dir || c.at[2] !== loc.name) continue;
    if (c.apply(node)) used.corrected.push(`${defKey(loc)} ${c.why}`);
  }
  return node;
}

const converted = new Map();
const locByKey = new Map();
const pending = [];

/** A $ref as it stands in the output: to a $defs entry, or {} when upstream has nothing to point at. */
function refTo(ref, from) {
  const loc = locate(ref, from);
  const key = defKey(loc);
  if (!rawDef(loc)) {
    used.opened.add(`${ref} (from ${from.repo}:${from.dir})`);
    return {};
  }
  locByKey.set(key, loc);
  pending.push(loc);
  return { $ref: `#/$defs/${key}` };
}

/** The converted schema of a definition, following aliases (a def that is only a $ref). */
function definition(loc) {
  const key = defKey(loc);
  if (!converted.has(key)) {
    converted.set(key, {}); // cycle guard
    converted.set(key, convert(rawDef(loc), loc));
  }
  const out = converted.get(key);
  return out.$ref ? definition(locByKey.get(out.$ref.slice('#/$defs/'.length))) : out;
}

function convert(node, from) {
  if (!node || typeof node !== 'object') return node;
  if (node.$ref) return refTo(node.$ref, from);
  const out = {};
  let open = false;
  for (const [k, v] of Object.entries(node)) {
    if (k === 'description' || k.startsWith('x-') || k === '$defs' || k === 'allOf') continue;
    if (k === 'properties') {
      out.properties = {};
      for (const [name, s] of Object.entries(v)) {
        // a Go field with no key of its own, which schemagen names after the field (the tail
        // sampling policies' ExtensionCfg, for extension policies custody does not use)
        if (/^[A-Z]/.test(name)) {
          used.dropped.add(name);
          continue;
        }
        out.properties[name] = convert(s, from);
      }
    } else if (k === 'items' || (k === 'additionalProperties' && typeof v === 'object')) out[k] = convert(v, from);
    else if (k === 'anyOf') out.anyOf = v.map((s) => convert(s, from));
    else if (k === 'format' && v === 'duration') out.pattern = GO_DURATION;
    else out[k] = v;
  }
  for (const member of node.allOf ?? []) {
    if (!member.$ref) throw new Error(`allOf without $ref in ${from.repo}:${from.dir}`);
    const loc = locate(member.$ref, from);
    if (!rawDef(loc)) {
      used.opened.add(`${member.$ref} (squashed into ${from.repo}:${from.dir})`);
      open = true;
      continue;
    }
    const squashed = definition(loc);
    out.properties = { ...out.properties, ...squashed.properties };
    if (squashed.additionalProperties !== false) open = true;
  }
  if (out.properties && out.additionalProperties === undefined && !open) out.additionalProperties = false;
  return out;
}

const components = {};
for (const [section, byType] of Object.entries(COMPONENTS)) {
  components[section] = {};
  for (const [type, [repo, dir, name]] of Object.entries(byType)) {
    const loc = { repo, dir, name };
    if (!rawDef(loc)) throw new Error(`no schema for ${section} ${type} at ${repo}:${dir}`);
    const key = defKey(loc);
    locByKey.set(key, loc);
    pending.push(loc);
    components[section][type] = { $ref: `#/$defs/${key}` };
  }
}
const $defs = {};
while (pending.length) {
  const loc = pending.shift();
  const key = defKey(loc);
  if ($defs[key]) continue;
  if (!converted.has(key)) definition(loc);
  $defs[key] = converted.get(key);
}

const describe = (id) => {
  const [repo, dir] = id.split(':');
  return repo === 'core' ? `opentelemetry-collector@${coreRev} ${dir}` : `opentelemetry-collector-contrib@${CONTRIB_COMMITS[dir] ?? '?'} ${dir}`;
};
const comment = [
  `The configuration of the Collector components custody's otel-config files use, from upstream's config.schema.yaml files: ${[...used.upstream].sort().map(describe).join('; ')}.`,
  used.standIn.size ? `Hand-written (no config.schema.yaml upstream): ${[...used.standIn].sort().join(', ')}.` : '',
  used.corrected.length ? `Corrected: ${used.corrected.join('; ')}.` : '',
  used.opened.size ? `Left open (referenced schema not upstream or not taken): ${[...used.opened].sort().join(', ')}.` : '',
  used.dropped.size ? `Dropped Go-named fields with no key of their own: ${[...used.dropped].join(', ')}.` : '',
  'Objects with declared properties refuse other keys, as confmap decoding does; converted by extract-otelcol.mjs.',
].filter(Boolean);
process.stdout.write(`${JSON.stringify({ $id: 'otelcol-components', $comment: comment.join(' '), components, $defs }, null, 1)}\n`);
