package graph

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"fleetgraph/fault"
	"fleetgraph/graph/accept"
	"fleetgraph/graph/live"
)

// overHTTP serves GraphQL over HTTP as the GraphQL-over-HTTP spec asks: a
// POST with a JSON body or a GET with a query string, answered in the media
// type the Accept header prefers (application/json when it names none),
// with these statuses:
//
//   - 406 when the client accepts neither JSON type;
//   - 400 for a request that is not a GraphQL-over-HTTP request (a body
//     member of the wrong type, no query), in either type;
//   - for a request error (parse, validation, variable coercion, a limit):
//     200 in application/json, which clients such as Apollo Client read as
//     a GraphQL result, and 400 in application/graphql-response+json, whose
//     clients read the status; the body has errors and no data entry;
//   - 405 with Allow: POST for a GET whose operation is not a query;
//   - 200 once execution started, errors or not.
//
// Subscriptions stream over the websocket and SSE transports; this one
// answers a subscription sent as a POST with its first result.
type overHTTP struct{ log *slog.Logger }

var _ graphql.Transport = overHTTP{}

// Supports implements graphql.Transport: POST and GET, not websocket
// upgrades. checkBody has already refused POST bodies other than JSON.
// Another Upgrade (curl --http2 offers h2c on http://) is a plain request:
// a server may ignore the header (RFC 9110, section 7.8), and this one
// upgrades to nothing but websockets.
func (overHTTP) Supports(r *http.Request) bool {
	return (r.Method == http.MethodPost || r.Method == http.MethodGet) && !live.OffersWebsocket(r.Header)
}

// Do implements graphql.Transport.
func (t overHTTP) Do(w http.ResponseWriter, r *http.Request, exec graphql.GraphExecutor) {
	ctx := r.Context()
	h := w.Header()
	h.Add("Vary", "Accept")
	mediaType := accept.Choose(accept.Header(r.Header), accept.JSON, accept.GraphQLResponse)
	if mediaType == "" {
		h.Set("Content-Type", accept.JSON)
		t.write(w, r, http.StatusNotAcceptable, false, httpRefusal("the Accept header accepts no type this endpoint answers in: accept application/json or application/graphql-response+json (or text/event-stream for a stream)", "NOT_ACCEPTABLE"))
		return
	}
	h.Set("Content-Type", mediaType) // JSON is UTF-8 (RFC 8259): no charset

	params := &graphql.RawParams{Headers: r.Header}
	start := graphql.Now()
	if err := live.ReadParams(r, params); err != nil {
		t.write(w, r, http.StatusBadRequest, false, httpRefusal(err.Error(), live.ReasonNotAGraphQLRequest))
		return
	}
	params.ReadTime = graphql.TraceTiming{Start: start, End: graphql.Now()}

	opCtx, errs := exec.CreateOperationContext(ctx, params)
	if errs != nil {
		resp := exec.DispatchError(graphql.WithOperationContext(ctx, opCtx), errs)
		t.write(w, r, requestErrorStatus(w, r, mediaType, resp), false, resp)
		return
	}
	responses, ctx := exec.DispatchOperation(ctx, opCtx)
	t.write(w, r, http.StatusOK, true, responses(ctx))
}

// requestErrorStatus is the status of a request refused before execution,
// as presented in resp.
func requestErrorStatus(w http.ResponseWriter, r *http.Request, mediaType string, resp *graphql.Response) int {
	for _, e := range resp.Errors {
		switch {
		case e.Extensions["reason"] == mutationOverGet.Extra["reason"],
			r.Method == http.MethodGet && e.Extensions["reason"] == subscriptionNeedsStream:
			// A persisted mutation, or a subscription, sent by GET: only
			// queries run over a plain GET (operationLimit refuses the
			// others before execution).
			w.Header().Set("Allow", http.MethodPost)
			return http.StatusMethodNotAllowed
		case e.Extensions["code"] == extensionPersistedQueryNotFound:
			// Automatic persisted queries: the client reads this error
			// from a 200 and resends with the full query.
			return http.StatusOK
		}
	}
	if mediaType == accept.GraphQLResponse {
		return http.StatusBadRequest
	}
	return http.StatusOK
}

// httpRefusal is a response of one BAD_USER_INPUT error with a reason.
func httpRefusal(message, reason string) *graphql.Response {
	return &graphql.Response{Errors: gqlerror.List{{Message: message, Extensions: map[string]any{"code": fault.BadUserInput, "reason": reason}}}}
}

// writeResponse writes resp with status. Only a response of an operation
// that executed has a data entry (null when execution failed): the
// GraphQL spec leaves it out of a request error.
func (t overHTTP) write(w http.ResponseWriter, r *http.Request, status int, executed bool, resp *graphql.Response) {
	var body any = resp
	if !executed {
		body = struct {
			Errors     gqlerror.List  `json:"errors"`
			Extensions map[string]any `json:"extensions,omitempty"`
		}{resp.Errors, resp.Extensions}
	}
	var b []byte
	var err error
	if executed {
		b, err = encodeResponse(resp)
	} else {
		b, err = json.Marshal(body)
	}
	if err != nil {
		// Resolvers return what marshals; a value that does not is a bug.
		id := RequestID(r.Context())
		t.log.ErrorContext(r.Context(), "internal error: encoding a response", "request_id", id, "error", err)
		b, _ = json.Marshal(gqlerror.List{{Message: fmt.Sprintf("internal error; quote request id %s when reporting it", id), Extensions: map[string]any{"code": fault.Internal, "requestId": id}}})
		b = append(append([]byte(`{"errors":`), b...), '}')
		status = http.StatusInternalServerError
	}
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// encodeResponse encodes an executed operation's response as json.Marshal
// would, but splices gqlgen's data bytes in as they are: json.Marshal
// re-validates and compacts a json.RawMessage byte by byte, which cost about
// 6% of a 50-robot list's CPU. Only the errors and extensions are encoded
// here (they are small); a response of incremental delivery, which this
// transport never sends, goes through json.Marshal whole.
func encodeResponse(resp *graphql.Response) ([]byte, error) {
	if resp.Label != "" || resp.Path != nil || resp.HasNext != nil {
		return json.Marshal(resp)
	}
	b := make([]byte, 0, len(resp.Data)+64)
	b = append(b, '{')
	if len(resp.Errors) > 0 {
		errs, err := json.Marshal(resp.Errors)
		if err != nil {
			return nil, err
		}
		b = append(append(append(b, `"errors":`...), errs...), ',')
	}
	b = append(b, `"data":`...)
	if len(resp.Data) == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, resp.Data...)
	}
	if len(resp.Extensions) > 0 {
		ext, err := json.Marshal(resp.Extensions)
		if err != nil {
			return nil, err
		}
		b = append(append(b, `,"extensions":`...), ext...)
	}
	return append(b, '}'), nil
}
