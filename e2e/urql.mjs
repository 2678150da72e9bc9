// Drives @urql/core on its default settings against the server at $URL:
// cacheExchange and fetchExchange (queries by GET within the URL limit,
// urql's Accept header), and subscriptions through subscriptionExchange over
// graphql-ws, as urql's documentation wires them. It subscribes to
// machineUpdated($MACHINE_ID); on the first (CURRENT) change it runs a
// query with an Int variable, a mutation, a query that fails validation
// and a mutation that fails in execution, prints {"ready": true}, and waits for the
// UPDATED change that e2e_test.go causes from Go.
import { Client, cacheExchange, fetchExchange, subscriptionExchange } from '@urql/core';
import { createClient as createWSClient } from 'graphql-ws';
import WebSocket from 'ws';
import { emit, env, done, exitWithParent, httpURL, wsURL, MACHINE_SUBSCRIPTION } from './lib.mjs';
import { MACHINES_QUERY, CREATE_MACHINE, INVALID_QUERY, START_MISSING, reportError } from './clients_common.mjs';

exitWithParent();
const token = env('TOKEN');
const machineID = env('MACHINE_ID');

const wsClient = createWSClient({
  url: wsURL(env('URL')),
  webSocketImpl: WebSocket,
  connectionParams: { Authorization: 'Bearer ' + token },
  retryAttempts: 0,
});

const client = new Client({
  url: httpURL(env('URL')),
  fetchOptions: { headers: { Authorization: 'Bearer ' + token } },
  // The HTTP method and status of each request, as the wire had them.
  fetch: async (url, init) => {
    const res = await fetch(url, init);
    emit({ http: { method: init?.method ?? 'GET', status: res.status, contentType: res.headers.get('content-type') } });
    return res;
  },
  exchanges: [
    cacheExchange,
    fetchExchange,
    subscriptionExchange({
      forwardSubscription(request) {
        const input = { ...request, query: request.query || '' };
        return {
          subscribe(sink) {
            const unsubscribe = wsClient.subscribe(input, sink);
            return { unsubscribe };
          },
        };
      },
    }),
  ],
});

/** Reports an urql result under op: its data, or its CombinedError. */
function report(op, result) {
  if (result.error) {
    reportError(op, result.error.graphQLErrors, result.error.networkError);
  } else {
    emit({ op, next: { data: result.data } });
  }
}

let started = false;
const { unsubscribe } = client.subscription(MACHINE_SUBSCRIPTION, { id: machineID }).subscribe(async (result) => {
  report('watch', result);
  const change = result.data?.machineUpdated;
  if (change?.op === 'CURRENT' && !started) {
    started = true;
    report('query', await client.query(MACHINES_QUERY, { n: 5 }).toPromise());
    report('mutation', await client.mutation(CREATE_MACHINE, { name: 'urql-made' }).toPromise());
    report('invalid', await client.query(INVALID_QUERY, {}).toPromise());
    report('missing', await client.mutation(START_MISSING, { id: '00000000-0000-4000-8000-000000000000' }).toPromise());
    emit({ ready: true });
  }
  if (change?.op === 'UPDATED') {
    unsubscribe();
    await wsClient.dispose();
    done();
  }
});
