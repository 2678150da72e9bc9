// Drives Apollo Client 3's own HTTP subscriptions (HttpLink alone, no
// websocket link: it sends subscriptions as multipart/mixed requests)
// against the server at $URL. $SCENARIO picks what it does:
//
//   machine   subscribe machineUpdated($MACHINE_ID) and unsubscribe once an
//             UPDATED change arrives (e2e_test.go starts the machine)
//   complete  subscribe machineUpdated($MACHINE_ID) and wait until the
//             server ends the stream (e2e_test.go shuts the streams down)
//   notfound  subscribe machineUpdated($MACHINE_ID), an id nobody owns
import { ApolloClient, InMemoryCache, HttpLink, gql } from '@apollo/client/core/index.js';
import { emit, env, done, exitWithParent, httpURL, MACHINE_SUBSCRIPTION } from './lib.mjs';

exitWithParent();
const scenario = env('SCENARIO');

const link = new HttpLink({
  uri: httpURL(env('URL')),
  headers: { Authorization: 'Bearer ' + env('TOKEN') },
  // The request's Accept and the answer's status and type, as the wire had them.
  fetch: async (url, init) => {
    const res = await fetch(url, init);
    emit({
      http: { method: init?.method ?? 'GET', status: res.status, contentType: res.headers.get('content-type') },
      accept: init?.headers?.accept,
    });
    return res;
  },
});
const client = new ApolloClient({ link, cache: new InMemoryCache() });

const subscription = client
  .subscribe({ query: gql(MACHINE_SUBSCRIPTION), variables: { id: env('MACHINE_ID') }, fetchPolicy: 'no-cache' })
  .subscribe({
    next: (result) => {
      emit({ op: 'watch', next: { data: result.data ?? null, errors: result.errors } });
      if (scenario === 'machine' && result.data?.machineUpdated?.op === 'UPDATED') {
        subscription.unsubscribe();
        done();
      }
    },
    error: (err) => {
      emit({
        op: 'watch',
        error: { message: err.message, graphQLErrors: err.graphQLErrors, protocolErrors: err.protocolErrors },
      });
      done();
    },
    complete: () => {
      emit({ op: 'watch', complete: true });
      done();
    },
  });
