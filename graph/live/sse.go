package live

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/99designs/gqlgen/graphql"

	"fleetgraph/auth"
	"fleetgraph/graph/accept"
)

// SSE serves operations as server-sent events, for clients that cannot open
// a websocket: a POST (JSON body) or GET (query string) that accepts
// text/event-stream gets `event: next` messages with each result and a final
// `event: complete` (the graphql-sse "distinct connections" mode). An
// operation that ends with an error sends it as a last `next` before
// `complete`; at shutdown the stream ends with `complete` too. It
// implements graphql.Transport.
type SSE struct {
	// KeepAlive is the interval of comment lines that keep proxies from
	// closing an idle stream.
	KeepAlive time.Duration
	// WriteTimeout bounds one event's write; a client that does not read is dropped.
	WriteTimeout time.Duration
	// Quota counts each stream against its caller's operations (nil: no limit).
	Quota *Quota
	// Streams ends the stream when the server shuts down (nil: never).
	Streams *Streams
	// Fanout shares rendered results between subscribers (nil: none).
	Fanout *Fanout
	// Auth re-checks a robot's API key every KeyRecheck (0: 30 s), as a
	// robot's websocket does: a revoked key's stream ends with
	// UNAUTHENTICATED. Without it a robot cannot open a stream.
	Auth       *auth.Authenticator
	KeyRecheck time.Duration
}

var _ graphql.Transport = SSE{}

// Supports implements graphql.Transport: POST and GET requests whose
// Accept header prefers text/event-stream (see PrefersEventStream), not
// offering a websocket (only a GET upgrades, on the websocket transport).
func (SSE) Supports(r *http.Request) bool {
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		return false
	}
	return PrefersEventStream(accept.Header(r.Header)) && !OffersWebsocket(r.Header)
}

// Do implements graphql.Transport.
func (t SSE) Do(w http.ResponseWriter, r *http.Request, exec graphql.GraphExecutor) {
	st := streamer{keepAlive: t.KeepAlive, writeTimeout: t.WriteTimeout, quota: t.Quota, streams: t.Streams, fanout: t.Fanout,
		auth: t.Auth, keyRecheck: t.KeyRecheck}
	st.serve(w, r, exec, framing{
		contentType: "text/event-stream",
		result: func(w http.ResponseWriter, data []byte) error {
			_, err := fmt.Fprintf(w, "event: next\ndata: %s\n\n", data)
			return err
		},
		keepAlive: func(w http.ResponseWriter) error {
			_, err := io.WriteString(w, ":\n\n")
			return err
		},
		end: func(w http.ResponseWriter) error {
			_, err := io.WriteString(w, "event: complete\ndata: \n\n")
			return err
		},
	})
}

// ReadParams reads the operation from a JSON body (POST) or the query
// string (GET), numbers as json.Number on both. Its error says which
// parameter is malformed, in words fit for a client, and echoes nothing.
func ReadParams(r *http.Request, params *graphql.RawParams) error {
	if r.Method == http.MethodGet {
		q := r.URL.Query()
		params.Query = q.Get("query")
		params.OperationName = q.Get("operationName")
		// Decoded as the POST body is, numbers as json.Number, so that an
		// Int variable is an Int on every transport.
		if v := q.Get("variables"); v != "" {
			if err := decodeJSON(v, &params.Variables); err != nil {
				return fmt.Errorf("variables must be a JSON object")
			}
		}
		if v := q.Get("extensions"); v != "" {
			if err := decodeJSON(v, &params.Extensions); err != nil {
				return fmt.Errorf("extensions must be a JSON object")
			}
		}
	} else {
		dec := json.NewDecoder(r.Body)
		dec.UseNumber()
		if err := dec.Decode(params); err != nil {
			var typeErr *json.UnmarshalTypeError
			if errors.As(err, &typeErr) {
				switch typeErr.Field {
				case "query", "operationName":
					return fmt.Errorf("%s must be a string", typeErr.Field)
				case "variables", "extensions":
					return fmt.Errorf("%s must be a JSON object", typeErr.Field)
				}
			}
			return fmt.Errorf("the request body must be a JSON object with a query")
		}
	}
	if params.Query == "" && params.Extensions["persistedQuery"] == nil {
		return fmt.Errorf("the request has no query: send the GraphQL document as the query parameter")
	}
	return nil
}

// decodeJSON decodes one JSON object with numbers as json.Number.
func decodeJSON(s string, v any) error {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the object")
	}
	return nil
}
