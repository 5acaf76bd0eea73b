// Turns the openAPIV3Schema of an upstream CustomResourceDefinition into a JSON Schema for ajv:
// objects with properties refuse unknown keys (unless the CRD preserves them), the Kubernetes
// extensions become their JSON Schema equivalents, and the named subtrees (pod templates, which
// custody's files never set) are replaced by "any object" to keep the test data small.
// usage: node extract.mjs <crd.yaml> <kind> <source note> [dotted.path.to.prune ...] > out.json
import fs from 'node:fs';
import { parseAllDocuments } from 'yaml';

const [file, kind, source, ...prune] = process.argv.slice(2);
const crd = parseAllDocuments(fs.readFileSync(file, 'utf8'))
  .map((d) => d.toJS())
  .find((d) => d?.kind === 'CustomResourceDefinition' && d.spec.names.kind === kind);
if (!crd) throw new Error(`no CRD for kind ${kind} in ${file}`);
const version = crd.spec.versions.find((v) => v.storage) ?? crd.spec.versions[0];
const schema = structuredClone(version.schema.openAPIV3Schema);

for (const p of prune) {
  const keys = p.split('.');
  let node = schema;
  for (const k of keys.slice(0, -1)) node = node.properties?.[k] ?? node.items?.properties?.[k] ?? node[k];
  const last = keys.at(-1);
  const holder = node.properties ?? node.items?.properties;
  if (!holder?.[last]) throw new Error(`nothing to prune at ${p}`);
  holder[last] = { type: 'object', 'x-kubernetes-preserve-unknown-fields': true, description: 'pruned from the test copy' };
}

function convert(node) {
  if (Array.isArray(node)) return node.map(convert);
  if (!node || typeof node !== 'object') return node;
  const out = {};
  for (const [k, v] of Object.entries(node)) {
    if (k === 'description') continue;
    if (k === 'properties') out.properties = Object.fromEntries(Object.entries(v).map(([name, s]) => [name, convert(s)]));
    else if (k === 'x-kubernetes-int-or-string') {
      if (v) out.type = ['integer', 'string'];
    } else if (k.startsWith('x-kubernetes-') || k === 'nullable') continue;
    else out[k] = convert(v);
  }
  if (node['x-kubernetes-int-or-string']) delete out.anyOf;
  if (node.nullable && out.type) out.type = [...[out.type].flat(), 'null'];
  if (out.properties && !node['x-kubernetes-preserve-unknown-fields'] && out.additionalProperties === undefined) out.additionalProperties = false;
  return out;
}

const result = {
  $comment: `${kind}, ${crd.metadata.name} ${version.name}, from ${source}; converted by extract.mjs${prune.length ? `, pruned: ${prune.join(', ')}` : ''}`,
  ...convert(schema),
};
// apiVersion/kind/metadata as the API server takes them
result.properties.apiVersion = { const: `${crd.spec.group}/${version.name}` };
result.properties.kind = { const: kind };
result.required = [...new Set([...(result.required ?? []), 'apiVersion', 'kind', 'metadata', 'spec'])];
process.stdout.write(`${JSON.stringify(result)}\n`);
