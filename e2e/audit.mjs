// Runs the graphql-http package's server audits (the GraphQL-over-HTTP
// spec's MUST, SHOULD and MAY checks) against the endpoint at $URL and
// prints one {"audit": ...} line per audit, then {"done": true}.
import { serverAudits } from 'graphql-http';
import { emit, env, done, exitWithParent, httpURL } from './lib.mjs';

exitWithParent();
const url = httpURL(env('URL'));

for (const audit of serverAudits({ url })) {
  const result = await audit.fn();
  const line = { id: result.id, name: result.name, status: result.status };
  if (result.status !== 'ok') {
    line.reason = result.reason;
    line.httpStatus = result.response.status;
    line.body = await result.response.text().catch(() => '');
  }
  emit({ audit: line });
}
done();
