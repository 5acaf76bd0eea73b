// The support assistant: triages tickets for its sponsor (alice, role support). It searches the
// knowledge base for every ticket, charges for paid upgrades, tries to attach notes to the file
// store (which support may not do), and hands every sixth ticket's refund to a refund sub-agent: a separate process
// started with plain child_process, which inherits its place in the chain of custody.
//
//   TICKETS=1-40 CUSTODY_SPONSOR_ID=alice CUSTODY_ROLE=support \
//     node --require custody/register examples/support-assistant/assistant.cjs
'use strict';
const path = require('node:path');
const { execFile } = require('node:child_process');
const { promisify } = require('node:util');
const custody = require('custody');
const { connectTools, report, sleep } = require('./tools.cjs');

const [first, last] = (process.env.TICKETS ?? '1-20').split('-').map(Number);
const pause = Number(process.env.TICKET_PAUSE_MS ?? 20);

(async () => {
  const tools = await connectTools('support-assistant');
  const refunds = [];
  for (let n = first; n <= last; n++) {
    const ticket = `T-${1000 + n}`;
    const customer = `cus_${(n * 37) % 97}`;
    await tools.call('search', { query: `ticket ${ticket}: ${n % 3 === 0 ? 'double charge' : 'login problem'}` });
    await tools.call('search', { query: `history of ${customer}` });
    if (n % 7 === 0) await tools.call('billing.charge', { customer, amount_cents: 4900 });
    if (n % 10 === 0) await tools.call('file-store.write', { path: `/tickets/${ticket}/notes.txt`, content: 'triaged' });
    if (n % 6 === 0) {
      // refunds go to a sub-agent process: no custody code, the chain travels in its environment
      const { stdout } = await promisify(execFile)(process.execPath, [path.join(__dirname, 'refund-agent.cjs')], {
        env: { ...process.env, CUSTODY_AGENT_NAME: 'refund-agent', TICKET: ticket, CUSTOMER: customer, AMOUNT_CENTS: '1500' },
      });
      refunds.push(JSON.parse(stdout.trim().split('\n').pop()));
    }
    await sleep(pause);
  }
  await tools.close();
  report(custody.currentAgent(), { calls: tools.calls, refunds });
})();
