// What the urql and Apollo Client scripts share: the operations they run
// and how they report results, so e2e_test.go reads both the same way.
import { emit } from './lib.mjs';

export const MACHINES_QUERY = `query Machines($n: Int!) { machines(first: $n) { totalCount edges { node { id name } } } }`;
export const CREATE_MACHINE = `mutation Create($name: String!) { createMachine(input: {name: $name}) { id name status } }`;
// Fails validation (no such field): a request error, refused before execution.
export const INVALID_QUERY = `query Invalid { machines(first: 1) { noSuchField } }`;
// Fails in execution: the machine does not exist (NOT_FOUND).
export const START_MISSING = `mutation StartMissing($id: ID!) { startMachine(id: $id) { id status } }`;

/** Reports a GraphQL error as a plain object with its extensions. */
export function plainError(e) {
  return { message: e.message, path: e.path ?? null, extensions: e.extensions ?? null };
}

/**
 * Reports a client library's error: the GraphQL errors it carries and its
 * network error (null when the error is GraphQL's only).
 */
export function reportError(op, graphQLErrors, networkError) {
  emit({
    op,
    error: {
      graphQLErrors: (graphQLErrors ?? []).map(plainError),
      networkError: networkError ? String(networkError.message ?? networkError) : null,
    },
  });
}
