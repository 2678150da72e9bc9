// Drives the graphql-ws client (graphql-transport-ws protocol) against the
// server at $URL. $SCENARIO picks what it does; see e2e_test.go.
//
//   machine   subscribe machineUpdated($MACHINE_ID) until an UPDATED change
//             arrives, running a query over the same client meanwhile
//   notfound  subscribe machineUpdated($MACHINE_ID) (an id nobody owns), then
//             run a query to show the socket still serves operations
//   badtoken  connect eagerly with $TOKEN (a bad one) and report the close
//   job       subscribe jobUpdated($JOB_ID) until the job is COMPLETED
import { createClient } from 'graphql-ws';
import {
  FramedWebSocket, emit, env, fail, done, exitWithParent, wsURL,
  MACHINE_SUBSCRIPTION, MACHINE_QUERY, JOB_SUBSCRIPTION,
} from './lib.mjs';

exitWithParent();
const scenario = env('SCENARIO');
const token = env('TOKEN');

const client = createClient({
  url: wsURL(env('URL')),
  webSocketImpl: FramedWebSocket,
  connectionParams: { Authorization: 'Bearer ' + token },
  retryAttempts: 0,
  lazy: scenario !== 'badtoken',
  onNonLazyError: (err) => emit({ nonLazyError: describe(err) }),
  on: {
    connected: () => emit({ connected: true }),
    closed: (e) => emit({ closed: { code: e.code, reason: e.reason } }),
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
        emit({ op, error: describe(err) });
        resolve('error');
      },
      complete: () => {
        emit({ op, complete: true });
        resolve('complete');
      },
    });
  });
}

/** Makes what graphql-ws hands to error() printable: GraphQL errors, a CloseEvent or an Error. */
function describe(err) {
  if (Array.isArray(err)) return err;
  if (err && typeof err === 'object' && 'code' in err && 'reason' in err) {
    return { closeCode: err.code, closeReason: err.reason };
  }
  if (err instanceof Error) return { message: err.message };
  return err;
}

switch (scenario) {
  case 'machine': {
    const id = env('MACHINE_ID');
    // The subscription runs until an UPDATED change, which the Go side
    // causes once it has seen CURRENT and the query's answer; then the
    // script stops it itself. The query runs while the subscription is
    // live, so both share the client's one socket.
    let queried = null;
    await new Promise((resolve) => {
      run('watch', { query: MACHINE_SUBSCRIPTION, variables: { id } }, (value, stop) => {
        const op = value.data?.machineUpdated?.op;
        if (op === 'CURRENT' && queried === null) {
          queried = run('query', { query: MACHINE_QUERY, variables: { id } });
        }
        if (op === 'UPDATED') {
          stop();
          resolve();
        }
      }).then(resolve);
    });
    await queried;
    await client.dispose();
    done();
    break;
  }
  case 'notfound': {
    await run('watch', { query: MACHINE_SUBSCRIPTION, variables: { id: env('MACHINE_ID') } });
    // The refused operation must leave the socket usable, and anything the
    // server sent about it would arrive before this query's answer.
    await run('query', { query: '{ me { id } }' });
    await client.dispose();
    done();
    break;
  }
  case 'badtoken': {
    // lazy: false connects at once; with retryAttempts 0 the first close is final.
    await new Promise((resolve) => client.on('closed', resolve));
    done();
    break;
  }
  case 'job': {
    await new Promise((resolve) => {
      run('watch', { query: JOB_SUBSCRIPTION, variables: { id: env('JOB_ID') } }, (value, stop) => {
        if (value.data?.jobUpdated?.job?.status === 'COMPLETED') {
          stop();
          resolve();
        }
      }).then(resolve);
    });
    await client.dispose();
    done();
    break;
  }
  default:
    fail(`unknown SCENARIO ${scenario}`);
}
