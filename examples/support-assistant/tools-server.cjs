// The SaaS team's tool server: search over the knowledge base, the billing API and a file store,
// offered over MCP (stdio). It is started by the agents' MCP client, and custody/register
// (inherited from the agent) joins its spans to the caller's trace. The billing tools are guarded
// (custody/guard): they run only for a valid custody token for billing, whoever calls them.
// Every request that reaches it is appended to $TOOLS_LOG, so the demo can show that a denied
// call never arrived.
'use strict';
const fs = require('node:fs');
const { McpServer } = require('@modelcontextprotocol/sdk/server/mcp.js');
const { StdioServerTransport } = require('@modelcontextprotocol/sdk/server/stdio.js');
const { z } = require('zod');
const { mcpToolGuard } = require('custody/guard');

// the token service is the agent's (CUSTODY_URL, handed down with the agent chain)
const billingGuard = mcpToolGuard({ tool: 'billing' });

const arrived = (tool, args) => {
  if (process.env.TOOLS_LOG) fs.appendFileSync(process.env.TOOLS_LOG, `${JSON.stringify({ tool, args })}\n`);
};
const text = (value) => ({ content: [{ type: 'text', text: JSON.stringify(value) }] });

const server = new McpServer({ name: 'acme-support-tools', version: '1.0.0' });

server.registerTool('search', { description: 'Search the knowledge base', inputSchema: { query: z.string() } }, async ({ query }) => {
  arrived('search', { query });
  return text({ hits: [`KB-${query.length * 7}: how to handle "${query}"`] });
});
server.registerTool(
  'billing.charge',
  { description: 'Charge a customer', inputSchema: { customer: z.string(), amount_cents: z.number().int().positive() } },
  billingGuard(async (args) => {
    arrived('billing.charge', args);
    return text({ charge_id: `ch_${args.customer}_${args.amount_cents}`, status: 'succeeded' });
  }),
);
server.registerTool(
  'billing.refund',
  { description: 'Refund a customer', inputSchema: { customer: z.string(), amount_cents: z.number().int().positive(), ticket: z.string() } },
  billingGuard(async (args, extra) => {
    arrived('billing.refund', { ...args, for: extra.custody.sponsor_id });
    return text({ refund_id: `re_${args.ticket}`, status: 'succeeded' });
  }),
);
server.registerTool(
  'file-store.write',
  { description: 'Attach a file to a ticket', inputSchema: { path: z.string(), content: z.string() } },
  async (args) => {
    arrived('file-store.write', { path: args.path });
    return text({ written: args.path });
  },
);

server.connect(new StdioServerTransport());
