// What every demo agent shares: an MCP client connected to the tool server, and a way to call a
// tool that turns custody's refusals into a result instead of a crash.
'use strict';
const path = require('node:path');
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StdioClientTransport } = require('@modelcontextprotocol/sdk/client/stdio.js');

async function connectTools(name) {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [path.join(__dirname, 'tools-server.cjs')],
    env: { TOOLS_LOG: process.env.TOOLS_LOG ?? '', OTEL_SERVICE_NAME: 'acme-support-tools' },
    stderr: 'inherit',
  });
  const client = new Client({ name, version: '1.0.0' });
  await client.connect(transport);
  const calls = [];
  return {
    calls,
    /** Calls a tool through MCP; custody asks the policy plane first. */
    async call(tool, args) {
      const at = Date.now();
      try {
        const result = await client.callTool({ name: tool, arguments: args });
        const ok = !result.isError;
        calls.push({ tool, ok, at, ...(ok ? {} : { code: 'tool_error', message: result.content?.[0]?.text }) });
        return ok ? JSON.parse(result.content[0].text) : undefined;
      } catch (err) {
        calls.push({ tool, ok: false, at, code: err.code ?? 'error' });
        return undefined;
      }
    },
    close: () => client.close(),
  };
}

/** The agent's last line on stdout: what it did, for the demo's summary. */
function report(agent, extra = {}) {
  process.stdout.write(`${JSON.stringify({ agent, ...extra })}\n`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

module.exports = { connectTools, report, sleep };
