// A webhook receiver that verifies every delivery with the Standard
// Webhooks reference library (npm `standardwebhooks`), independently of
// Fleetgraph's own signing code. It listens on loopback, prints
// {"listening": url}, then for each request one line
// {"webhook": {id, verified: {secret: true|error}, payload}} and answers 204.
// WEBHOOK_SECRETS is a comma-separated list of secrets to try, each alone.
import http from 'node:http';
import { Webhook } from 'standardwebhooks';
import { emit, env } from './lib.mjs';

const secrets = env('WEBHOOK_SECRETS').split(',');

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    const verified = {};
    let payload = null;
    for (const secret of secrets) {
      try {
        payload = new Webhook(secret).verify(body, req.headers);
        verified[secret] = true;
      } catch (e) {
        verified[secret] = String(e.message || e);
      }
    }
    emit({ webhook: { id: req.headers['webhook-id'], signature: req.headers['webhook-signature'], verified, payload } });
    res.writeHead(204).end();
  });
});

server.listen(0, '127.0.0.1', () => {
  emit({ listening: `http://127.0.0.1:${server.address().port}/hook` });
});

// Exit when the Go test closes stdin.
process.stdin.resume();
process.stdin.on('end', () => server.close(() => process.exit(0)));
