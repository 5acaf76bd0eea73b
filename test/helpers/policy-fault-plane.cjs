// A broken policy plane on 127.0.0.1, for the chaos tests. argv[2] is the fault:
//   hang     accepts connections and never answers
//   slow     answers a well-formed allow after 250 ms
//   garbage  answers 200 with text that is not JSON, or JSON that is not a decision, in turn
//   5xx      answers 503 with a JSON error
// argv[3] is the port (0: any). Prints "listening <port>".
const http = require('node:http');
const net = require('node:net');
const mode = process.argv[2];
const port = Number(process.argv[3] ?? 0);
let n = 0;

const allow = () =>
  JSON.stringify({ decision: 'allow', policy_decision_id: '01JAAAAAAAAAAAAAAAAAAAAAAA', rule_id: 'slow', reason: 'slow', cohort: 'canary', enforced: true });

const server =
  mode === 'hang'
    ? net.createServer((socket) => {
        socket.on('data', () => undefined); // read, never write
      })
    : http.createServer((req, res) => {
        req.resume();
        req.on('end', () => {
          if (mode === 'slow') {
            const body = req.url.startsWith('/v1/rollout') ? JSON.stringify({ percent: 100, incident: null }) : allow();
            setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end(body), 250);
          } else if (mode === 'garbage') {
            const kinds = ['<html>upstream error</html>', '{"decision":"maybe","policy_decision_id":7}', '[]', '{"decision":"allow"}'];
            res.writeHead(200, { 'content-type': 'application/json' }).end(kinds[n++ % kinds.length]);
          } else if (mode === '5xx') {
            res.writeHead(503, { 'content-type': 'application/json' }).end('{"error":{"code":"overloaded","message":"try later"}}');
          } else {
            res.writeHead(500).end();
          }
        });
      });
server.listen(port, '127.0.0.1', () => process.stdout.write(`listening ${server.address().port}\n`));
