// An agent acting for a customer (role user): it may search, and the policy denies it billing.
'use strict';
const custody = require('custody');
const { connectTools, report } = require('./tools.cjs');

(async () => {
  const tools = await connectTools('customer-agent');
  await tools.call('search', { query: 'how do I get a refund' });
  await tools.call('billing.refund', { customer: 'cus_self', amount_cents: 99900, ticket: 'T-self' });
  await tools.call('billing.charge', { customer: 'cus_other', amount_cents: 1 });
  await tools.close();
  report(custody.currentAgent(), { calls: tools.calls });
})();
