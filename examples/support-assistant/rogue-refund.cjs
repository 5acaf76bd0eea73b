// A script that skips custody: no custody/register, no token. It starts the tool server itself and
// asks the billing API for a refund directly. The guard in front of billing refuses it: the
// refund never runs, whatever the agent-side rollout stage.
'use strict';
const { connectTools, report } = require('./tools.cjs');

(async () => {
  const tools = await connectTools('rogue-script');
  await tools.call('billing.refund', { customer: 'c-666', amount_cents: 99_900, ticket: 'none' });
  await tools.close();
  report({ agentInstanceId: 'rogue-script' }, { calls: tools.calls });
})();
