package live

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/99designs/gqlgen/graphql"

	"fleetgraph/fault"
	"fleetgraph/metrics"
)

// SSE serves operations as server-sent events, for clients that cannot open
// a websocket: a POST (JSON body) or GET (query string) that accepts
// text/event-stream gets `event: next` messages with each result and a final
// `event: complete` (the graphql-sse "distinct connections" mode). An
// operation that ends with an error sends it as a last `next` before
// `complete`. It implements graphql.Transport.
type SSE struct {
	// KeepAlive is the interval of comment lines that keep proxies from
	// closing an idle stream.
	KeepAlive time.Duration
	// WriteTimeout bounds one event's write; a client that does not read is dropped.
	WriteTimeout time.Duration
	// Quota counts each stream against its caller's operations (nil: no limit).
	Quota *Quota
}

var _ graphql.Transport = SSE{}

// Supports implements graphql.Transport: requests whose Accept header
// prefers text/event-stream to every JSON type it names, by q-value and
// then by order. Clients such as urql list text/event-stream after the
// JSON types on every request, and get JSON.
func (SSE) Supports(r *http.Request) bool {
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		return false
	}
	return PrefersEventStream(r.Header.Get("Accept"))
}

// PrefersEventStream reports whether an Accept header ranks
// text/event-stream above application/json and
// application/graphql-response+json: a higher q-value, or the same one
// listed first. Wildcards rank below every type they would match.
func PrefersEventStream(accept string) bool {
	type rank struct {
		q     float64
		order int
		found bool
	}
	var stream, json rank
	for i, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		q := 1.0
		if v, ok := params["q"]; ok {
			if q, err = strconv.ParseFloat(v, 64); err != nil || q < 0 || q > 1 {
				continue
			}
		}
		r := rank{q: q, order: i, found: true}
		better := func(a, b rank) bool { return !b.found || a.q > b.q }
		switch mt {
		case "text/event-stream":
			if better(r, stream) {
				stream = r
			}
		case "application/json", "application/graphql-response+json", "application/*", "*/*":
			if mt == "application/*" || mt == "*/*" {
				r.order = 1 << 30 // a wildcard only stands in for JSON not listed
			}
			if better(r, json) || (r.q == json.q && r.order < json.order) {
				json = r
			}
		}
	}
	if !stream.found || stream.q == 0 {
		return false
	}
	return !json.found || stream.q > json.q || (stream.q == json.q && stream.order < json.order)
}

// Do implements graphql.Transport.
func (t SSE) Do(w http.ResponseWriter, r *http.Request, exec graphql.GraphExecutor) {
	params := &graphql.RawParams{Headers: r.Header}
	if err := readParams(r, params); err != nil {
		metrics.SentError(r.Context(), string(fault.BadUserInput))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]any{{"message": err.Error(), "extensions": map[string]any{"code": "BAD_USER_INPUT"}}}})
		return
	}
	release, err := t.Quota.Hold(r.Context())
	if err != nil {
		metrics.SentError(r.Context(), string(fault.CodeOf(err)))
		writeRefusal(w, http.StatusTooManyRequests, err)
		return
	}
	defer release()
	// The body is read: only now does the request become a stream, which
	// lives as long as its operation. Until here the server's read timeout
	// stood, so a client trickling a body cannot hold a connection. Each
	// write below sets its own deadline.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush()

	events := make(chan []byte)
	done := make(chan outcome, 1)
	ctx := r.Context()
	go func() {
		done <- execute(ctx, exec, params, func(resp *graphql.Response) error {
			select {
			case events <- mustJSON(resp):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	send := func(event string, data []byte) error {
		_ = rc.SetWriteDeadline(time.Now().Add(t.WriteTimeout))
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data); err != nil {
			return err
		}
		return rc.Flush()
	}
	keepAlive := time.NewTicker(t.KeepAlive)
	defer keepAlive.Stop()
	for {
		select {
		case data := <-events:
			if send("next", data) != nil {
				return
			}
		case <-keepAlive.C:
			_ = rc.SetWriteDeadline(time.Now().Add(t.WriteTimeout))
			if _, err := io.WriteString(w, ":\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case out := <-done:
			if out.stopped {
				return
			}
			if out.errs != nil {
				if send("next", mustJSON(map[string]any{"errors": out.errs})) != nil {
					return
				}
			}
			_ = send("complete", nil)
			return
		}
	}
}

// readParams reads the operation from a JSON body (POST) or the query string (GET).
func readParams(r *http.Request, params *graphql.RawParams) error {
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
			return fmt.Errorf("the request body must be a JSON object with a query")
		}
	}
	if params.Query == "" && params.Extensions["persistedQuery"] == nil {
		return fmt.Errorf("give a query")
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
