// Drives Apollo Client 3 on its default settings against the server at
// $URL: HttpLink (POST, Accept: */*) for queries and mutations, and
// GraphQLWsLink over graphql-ws for subscriptions, split as Apollo's
// documentation shows. The scenario is urql.mjs's: subscribe to
// machineUpdated($MACHINE_ID); on CURRENT run a query with an Int variable,
// a mutation, a query that fails validation and a mutation that fails in
// execution, print {"ready": true}, and wait for the UPDATED change that
// e2e_test.go causes from Go.
import { ApolloClient, InMemoryCache, HttpLink, split, gql } from '@apollo/client/core/index.js';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions/index.js';
import { getMainDefinition } from '@apollo/client/utilities/index.js';
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

const httpLink = new HttpLink({
  uri: httpURL(env('URL')),
  headers: { Authorization: 'Bearer ' + token },
  // The HTTP method and status of each request, as the wire had them.
  fetch: async (url, init) => {
    const res = await fetch(url, init);
    emit({ http: { method: init?.method ?? 'GET', status: res.status, contentType: res.headers.get('content-type') } });
    return res;
  },
});

const link = split(
  ({ query }) => {
    const def = getMainDefinition(query);
    return def.kind === 'OperationDefinition' && def.operation === 'subscription';
  },
  new GraphQLWsLink(wsClient),
  httpLink,
);

const client = new ApolloClient({ link, cache: new InMemoryCache() });

/** Runs an Apollo call under op and reports its data or its ApolloError. */
async function report(op, call) {
  try {
    const result = await call();
    emit({ op, next: { data: result.data } });
  } catch (err) {
    reportError(op, err.graphQLErrors, err.networkError);
  }
}

let started = false;
const observable = client.subscribe({ query: gql(MACHINE_SUBSCRIPTION), variables: { id: machineID } });
const subscription = observable.subscribe({
  next: async (result) => {
    emit({ op: 'watch', next: { data: result.data } });
    const change = result.data?.machineUpdated;
    if (change?.op === 'CURRENT' && !started) {
      started = true;
      await report('query', () => client.query({ query: gql(MACHINES_QUERY), variables: { n: 5 } }));
      await report('mutation', () => client.mutate({ mutation: gql(CREATE_MACHINE), variables: { name: 'apollo-made' } }));
      await report('invalid', () => client.query({ query: gql(INVALID_QUERY) }));
      await report('missing', () => client.mutate({ mutation: gql(START_MISSING), variables: { id: '00000000-0000-4000-8000-000000000000' } }));
      emit({ ready: true });
    }
    if (change?.op === 'UPDATED') {
      subscription.unsubscribe();
      await wsClient.dispose();
      done();
    }
  },
  error: (err) => reportError('watch', err.graphQLErrors, err.networkError ?? err),
});
