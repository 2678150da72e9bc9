package live

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/99designs/gqlgen/graphql"

	"fleetgraph/auth"
	"fleetgraph/graph/accept"
)

// Multipart serves operations as Apollo's multipart HTTP subscriptions
// (the protocol Apollo Client, Apollo Kotlin and Apollo iOS speak over
// plain HTTP): a POST (JSON body) or GET (query string) whose Accept header
// prefers `multipart/mixed;subscriptionSpec="1.0"` gets a
// `multipart/mixed; boundary="graphql"; subscriptionSpec="1.0"` response in
// which every part is JSON: `{"payload": <result>}` for each result, `{}`
// as a heartbeat while idle, and the closing `--graphql--` when the
// operation completes, ends with an error (sent first as a payload with
// errors), or the server shuts down. It implements graphql.Transport.
type Multipart struct {
	// KeepAlive is the interval of heartbeat parts that keep proxies from
	// closing an idle stream.
	KeepAlive time.Duration
	// WriteTimeout bounds one part's write; a client that does not read is dropped.
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

var _ graphql.Transport = Multipart{}

// multipartBoundary separates the parts; Apollo's clients read it from the
// Content-Type, and its spec asks servers to use "graphql".
const multipartBoundary = "graphql"

// Supports implements graphql.Transport: POST and GET requests whose
// Accept header prefers multipart subscriptions (see PrefersMultipart),
// not offering a websocket.
func (Multipart) Supports(r *http.Request) bool {
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		return false
	}
	return PrefersMultipart(accept.Header(r.Header)) && !OffersWebsocket(r.Header)
}

// Do implements graphql.Transport. Each part is followed by the next
// delimiter at once, not preceded by it: a reader knows a part is complete
// only when it sees the delimiter after it, so a part written the other way
// round would wait for the next event or heartbeat.
func (t Multipart) Do(w http.ResponseWriter, r *http.Request, exec graphql.GraphExecutor) {
	const (
		delimiter = "\r\n--" + multipartBoundary
		head      = "Content-Type: application/json\r\n\r\n"
	)
	part := func(w http.ResponseWriter, body []byte) error {
		_, err := fmt.Fprintf(w, "%s%s%s\r\n", head, body, delimiter)
		return err
	}
	st := streamer{keepAlive: t.KeepAlive, writeTimeout: t.WriteTimeout, quota: t.Quota, streams: t.Streams, fanout: t.Fanout,
		auth: t.Auth, keyRecheck: t.KeyRecheck}
	st.serve(w, r, exec, framing{
		contentType: `multipart/mixed; boundary="` + multipartBoundary + `"; subscriptionSpec="1.0"`,
		begin: func(w http.ResponseWriter) error {
			_, err := io.WriteString(w, delimiter+"\r\n")
			return err
		},
		result: func(w http.ResponseWriter, data []byte) error {
			return part(w, append(append([]byte(`{"payload":`), data...), '}'))
		},
		keepAlive: func(w http.ResponseWriter) error { return part(w, []byte("{}")) },
		// The last part is an empty object, which readers skip as a
		// heartbeat, closed by the final delimiter.
		end: func(w http.ResponseWriter) error {
			_, err := io.WriteString(w, head+"{}"+delimiter+"--\r\n")
			return err
		},
	})
}
