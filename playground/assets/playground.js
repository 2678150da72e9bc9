// Starts GraphiQL for fleetgraph. It is a file of its own, not an inline
// script, so that the page can run under a Content-Security-Policy that
// allows scripts from 'self' only.
//
// Queries and mutations go to the endpoint over HTTP POST with the headers
// from GraphiQL's headers editor. Subscriptions go over a websocket at the
// same path with the graphql-transport-ws protocol; browsers cannot set
// headers on a websocket, so the same headers travel as the connection_init
// payload (graphql-ws connectionParams), where the server reads the
// Authorization header from.
(function () {
  'use strict';

  var container = document.getElementById('graphiql');
  var endpoint = container.getAttribute('data-endpoint');
  var httpURL = new URL(endpoint, window.location.href);
  var wsURL = new URL(httpURL.href);
  wsURL.protocol = httpURL.protocol === 'https:' ? 'wss:' : 'ws:';

  // current holds the graphql-ws client made for one set of headers and the
  // GraphiQL fetcher that uses it. A client's connectionParams are fixed when
  // it is made, so new headers need a new client; the old one is disposed,
  // which closes its socket.
  var current = null;

  function fetcherFor(headers) {
    var key = JSON.stringify(headers || {});
    if (current !== null && current.key === key) {
      return current.fetcher;
    }
    if (current !== null) {
      current.client.dispose();
    }
    var params = JSON.parse(key);
    var client = graphqlWs.createClient({
      url: wsURL.href,
      lazy: true,
      connectionParams: function () {
        return params;
      },
    });
    current = {
      key: key,
      client: client,
      fetcher: GraphiQL.createFetcher({ url: httpURL.href, wsClient: client }),
    };
    return current.fetcher;
  }

  // GraphiQL passes the parsed headers editor in opts.headers, both for
  // operations and for schema introspection. createFetcher sends them with
  // every HTTP request and routes subscription operations to the wsClient.
  function fetcher(graphQLParams, opts) {
    return fetcherFor(opts && opts.headers)(graphQLParams, opts);
  }

  // The page can be linked with ?query=...&variables=...&operationName=...
  // &headers=... as in GraphiQL's own examples. Edits are written back to the
  // address bar, except headers, which would put tokens in the history.
  // A development server puts ready-made headers (the demo user's token) in
  // data-default-headers; a headers parameter in the address wins.
  var search = new URLSearchParams(window.location.search);
  var defaultHeaders = container.getAttribute('data-default-headers');
  var props = {
    fetcher: fetcher,
    defaultEditorToolsVisibility: search.has('variables') || search.has('headers') || !!defaultHeaders,
  };
  if (defaultHeaders && !search.has('headers')) {
    props.headers = defaultHeaders;
  }
  ['query', 'variables', 'headers', 'operationName'].forEach(function (name) {
    if (search.has(name)) {
      props[name] = search.get(name);
    }
  });

  function remember(name) {
    return function (value) {
      var next = new URLSearchParams(window.location.search);
      if (value) {
        next.set(name, value);
      } else {
        next.delete(name);
      }
      var query = next.toString();
      window.history.replaceState(null, '', query ? '?' + query : window.location.pathname);
    };
  }
  props.onEditQuery = remember('query');
  props.onEditVariables = remember('variables');
  props.onEditOperationName = remember('operationName');

  ReactDOM.createRoot(container).render(React.createElement(GraphiQL, props));
})();
