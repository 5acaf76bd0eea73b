// An agent someone started without naming a sponsor: custody counts the missing sponsor and
// refuses its tool calls.
'use strict';
const custody = require('custody');
const { connectTools, report } = require('./tools.cjs');

(async () => {
  const tools = await connectTools('unsponsored-agent');
  await tools.call('search', { query: 'who am I acting for?' });
  await tools.call('billing.refund', { customer: 'cus_1', amount_cents: 500, ticket: 'T-0' });
  await tools.close();
  report(custody.currentAgent(), { calls: tools.calls });
})();
