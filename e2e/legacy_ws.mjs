// Drives subscriptions-transport-ws (the legacy graphql-ws protocol) against
// the server at $URL. $SCENARIO picks what it does; see e2e_test.go.
//
//   machine   subscribe machineUpdated($MACHINE_ID) as "first" until an
//             UPDATED change and unsubscribe it, then, on the same socket,
//             machineUpdated($SECOND_MACHINE_ID) as "second" until an UPDATED
//             change
//   notfound  subscribe machineUpdated($MACHINE_ID) (an id nobody owns)
//   badtoken  connect with $TOKEN (a bad one) and report the refusal
import { SubscriptionClient } from 'subscriptions-transport-ws';
import {
  FramedWebSocket, emit, env, fail, done, exitWithParent, wsURL, MACHINE_SUBSCRIPTION,
} from './lib.mjs';

exitWithParent();
const scenario = env('SCENARIO');

const client = new SubscriptionClient(
  wsURL(env('URL')),
  {
    connectionParams: { Authorization: 'Bearer ' + env('TOKEN') },
    reconnect: false,
    // Called with no argument on connection_ack, with the payload on connection_error.
    connectionCallback: (err) => emit({ connectionCallback: err ?? null }),
  },
  FramedWebSocket,
);
client.onConnected(() => emit({ connected: true }));
client.onDisconnected(() => emit({ disconnected: true }));

/**
 * Subscribes as op. It resolves with 'error' or 'complete' when the server
 * ends the operation, or with 'updated' (after unsubscribing) at the first
 * UPDATED change.
 */
function watch(op, id) {
  return new Promise((resolve) => {
    const sub = client.request({ query: MACHINE_SUBSCRIPTION, variables: { id } }).subscribe({
      next: (value) => {
        emit({ op, next: value });
        if (value.data?.machineUpdated?.op === 'UPDATED') {
          sub.unsubscribe();
          emit({ op, unsubscribed: true });
          resolve('updated');
        }
      },
      error: (err) => {
        emit({ op, error: { message: err.message, extensions: err.extensions } });
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
    await watch('first', env('MACHINE_ID'));
    await watch('second', env('SECOND_MACHINE_ID'));
    client.close();
    done();
    break;
  }
  case 'notfound': {
    await watch('watch', env('MACHINE_ID'));
    client.close();
    done();
    break;
  }
  case 'badtoken': {
    await new Promise((resolve) => client.onDisconnected(resolve));
    done();
    break;
  }
  default:
    fail(`unknown SCENARIO ${scenario}`);
}
