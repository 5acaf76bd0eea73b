// The refund sub-agent: started by the support assistant for one refund. It has no sponsor of its
// own; custody/register gives it a new agent instance whose parent is the assistant, and a token
// exchanged from the assistant's delegation token, so the refund is attributed to alice.
'use strict';
const custody = require('custody');
const { connectTools, report } = require('./tools.cjs');

(async () => {
  const tools = await connectTools('refund-agent');
  const refund = await tools.call('billing.refund', {
    customer: process.env.CUSTOMER,
    amount_cents: Number(process.env.AMOUNT_CENTS),
    ticket: process.env.TICKET,
  });
  await tools.close();
  report(custody.currentAgent(), { calls: tools.calls, ticket: process.env.TICKET, refund });
})();
