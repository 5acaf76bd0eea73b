// The rest of the fleet: agents outside the canary share of the rollout. Their calls are decided
// and recorded in shadow (enforced=false) but never wait for the policy plane nor are blocked.
'use strict';
const custody = require('custody');
const { connectTools, report, sleep } = require('./tools.cjs');

(async () => {
  const tools = await connectTools('fleet-agent');
  const calls = Number(process.env.FLEET_CALLS ?? 5);
  for (let i = 0; i < calls; i++) {
    await tools.call('search', { query: `fleet question ${i}` });
    await sleep(10);
  }
  // a call the policy would deny: in shadow it runs, and the deny is on record
  await tools.call('file-store.write', { path: '/shadow/report.txt', content: 'nightly' });
  await tools.close();
  report(custody.currentAgent(), { calls: tools.calls });
})();
