// Drives the graphql-sse client in its distinct connections mode (one
// text/event-stream response per operation) against the server at $URL.
// $SCENARIO picks what it does; see e2e_test.go.
//
//   machine   subscribe machineUpdated($MACHINE_ID) until an UPDATED change
//             arrives, then run a query over the same client
//   notfound  subscribe machineUpdated($MACHINE_ID) (an id nobody owns)
import { createClient } from 'graphql-sse';
import {
  emit, env, fail, done, exitWithParent, httpURL, MACHINE_SUBSCRIPTION, MACHINE_QUERY,
} from './lib.mjs';

exitWithParent();
const scenario = env('SCENARIO');

const client = createClient({
  url: httpURL(env('URL')),
  headers: { Authorization: 'Bearer ' + env('TOKEN') },
  singleConnection: false,
  retryAttempts: 0,
  // Each parsed server-sent event, as the wire had it.
  onMessage: (msg) => emit({ sse: msg }),
  // The HTTP status and content type of each stream the client opens.
  fetchFn: async (url, init) => {
    const res = await fetch(url, init);
    emit({ http: { method: init.method, status: res.status, contentType: res.headers.get('content-type') } });
    return res;
  },
});

/** Runs one operation, reporting each callback as a line tagged with op. */
function run(op, payload, onNext) {
  return new Promise((resolve) => {
    const stop = client.subscribe(payload, {
      next: (value) => {
        emit({ op, next: value });
        if (onNext) onNext(value, stop);
      },
      error: (err) => {
        emit({ op, error: err instanceof Error ? { message: err.message } : err });
        resolve('error');
      },
      complete: () => {
        emit({ op, complete: true });
        resolve('complete');
      },
    });
  });
}

switch (scenario) {
  case 'machine': {
    const id = env('MACHINE_ID');
    await new Promise((resolve) => {
      run('watch', { query: MACHINE_SUBSCRIPTION, variables: { id } }, (value, stop) => {
        if (value.data?.machineUpdated?.op === 'UPDATED') {
          stop();
          resolve();
        }
      }).then(resolve);
    });
    await run('query', { query: MACHINE_QUERY, variables: { id } });
    client.dispose();
    done();
    break;
  }
  case 'notfound': {
    await run('watch', { query: MACHINE_SUBSCRIPTION, variables: { id: env('MACHINE_ID') } });
    client.dispose();
    done();
    break;
  }
  default:
    fail(`unknown SCENARIO ${scenario}`);
}
