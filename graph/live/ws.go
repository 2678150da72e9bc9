package live

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/99designs/gqlgen/graphql"
	coderws "github.com/coder/websocket"
	"github.com/google/uuid"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"fleetgraph/auth"
	"fleetgraph/fault"
	"fleetgraph/metrics"
)

// Close codes of graphql-transport-ws (PROTOCOL.md), and RFC 6455's.
const (
	CloseBadRequest          = 4400
	CloseUnauthorized        = 4401
	CloseForbidden           = 4403
	CloseInitTimeout         = 4408
	CloseSubscriberExists    = 4409
	CloseTooManyInitRequests = 4429
	CloseGoingAway           = 1001
	CloseNormal              = 1000
	// CloseTryAgainLater (RFC 6455's registry) closes a connection the server
	// cannot serve for now, such as when its database is unreachable:
	// graphql-ws clients retry it, unlike 4403 or 1011.
	CloseTryAgainLater = 1013
	// CloseInternalError (RFC 6455) ends a socket the server failed on.
	CloseInternalError = 1011
	// CloseNotUTF8 (RFC 6455, section 8.1) ends a socket whose text message
	// is not UTF-8: decoding it would replace the bad bytes with U+FFFD, and
	// what a mutation then stored would not be what the client sent.
	CloseNotUTF8 = 1007
)

// Subprotocols.
const (
	ProtocolTransportWS = "graphql-transport-ws"
	ProtocolLegacyWS    = "graphql-ws"
)

// Websocket is the websocket transport for both protocols; the client's
// subprotocol picks one. It implements graphql.Transport.
type Websocket struct {
	Auth *auth.Authenticator
	Log  *slog.Logger
	// InitTimeout bounds the wait for connection_init (4408 after it).
	InitTimeout time.Duration
	// KeepAlive is the interval of the server's pings (graphql-transport-ws)
	// or keep-alive messages (graphql-ws).
	KeepAlive time.Duration
	// WriteTimeout bounds one message write; a client that does not read is closed.
	WriteTimeout time.Duration
	// ReadLimit caps one client message, in bytes.
	ReadLimit int64
	// Decoding bounds what the messages being handled decode to (nil:
	// only their elements are checked).
	Decoding *DecodeBudget
	// Quota caps the subscriptions of one connection and of one caller
	// across connections (nil: DefaultLimits per connection, none per caller).
	Quota *Quota
	// KeyRecheck is how often a robot's connection re-checks its API key
	// (0: every 30 seconds).
	KeyRecheck time.Duration
	// Fanout shares rendered results between subscribers (nil: none).
	Fanout *Fanout
}

var _ graphql.Transport = Websocket{}

// Supports implements graphql.Transport: websocket upgrade requests, which
// are GETs.
func (Websocket) Supports(r *http.Request) bool {
	return r.Method == http.MethodGet && OffersWebsocket(r.Header)
}

// OffersWebsocket reports whether a request's Upgrade headers name the
// websocket protocol among theirs (a comma-separated list of tokens, the
// token "websocket" compared case-insensitively, without a version), as
// the websocket library's handshake reads them: every check of "is this an
// upgrade" uses it, so that none disagrees with the transport.
func OffersWebsocket(h http.Header) bool {
	for _, v := range h.Values("Upgrade") {
		for token := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(token), "websocket") {
				return true
			}
		}
	}
	return false
}

// Do implements graphql.Transport. It serves the socket until it closes,
// including the close handshake, so callers can wait for it; or, when the
// request has a lifetime (WithLifetime), on a goroutine of its own,
// returning at once: the request then ends (AtEnd) when the socket has
// closed. Either way the socket ends when the request's context does
// (shutdown), so a detached request's context must be one net/http does
// not cancel when the handler returns (graph.sockets gives it one).
func (t Websocket) Do(w http.ResponseWriter, r *http.Request, exec graphql.GraphExecutor) {
	ctx := r.Context()
	// A place for the socket, before anything is held for it: counted as
	// its caller's when the upgrade carries a credential; otherwise as its
	// address's pending sockets until connection_init names its caller.
	key := pendingKey(auth.ClientIPFrom(ctx))
	if p := auth.FromContext(ctx); p != nil {
		key = callerKey(p, auth.ClientIPFrom(ctx))
	}
	place, perCaller, err := t.Quota.OpenSocket(key)
	if err != nil {
		status := http.StatusServiceUnavailable
		if perCaller {
			status = http.StatusTooManyRequests
		}
		w.Header().Set("Retry-After", "5")
		writeRefusal(ctx, w, status, err)
		return
	}
	// An upgrade has no body to trickle: the socket lives as long as its
	// subscriptions, under the init timeout and keep-alives instead of the
	// server's request deadlines, which the hijacked connection would keep.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	cw := &corkingWriter{ResponseWriter: w, timeout: t.WriteTimeout}
	conn, err := coderws.Accept(cw, r, &coderws.AcceptOptions{
		Subprotocols: []string{ProtocolTransportWS, ProtocolLegacyWS},
		// Origins were checked before the transport (graph.sockets).
		InsecureSkipVerify: true,
	})
	if err != nil {
		place.Close()
		t.Log.Debug("websocket upgrade failed", "error", err)
		return
	}
	d := transportWS
	switch conn.Subprotocol() {
	case ProtocolTransportWS:
	case ProtocolLegacyWS:
		d = legacyWS
	default:
		_ = conn.Close(4406, "Subprotocol not acceptable: use graphql-transport-ws")
		place.Close() // after the close handshake, which holds the socket
		return
	}
	conn.SetReadLimit(t.ReadLimit)
	c := &wsConn{t: t, d: d, conn: conn, sock: cw.conn, exec: exec, ip: auth.ClientIPFrom(ctx), place: place,
		principal: auth.FromContext(ctx), ops: map[string]*wsOp{}, closed: make(chan struct{})}
	// A robot's upgrade request's own credentials, re-checked like a
	// payload's: only they and the address are kept for it, not the
	// request. (Only robots' credentials are re-checked: see recheck.)
	if c.principal != nil && c.principal.RobotID != uuid.Nil {
		c.reauth = requestReauth(t.Auth, r)
	}
	serve := func() {
		defer place.Close()
		defer func() {
			if p := recover(); p != nil {
				// As net/http does for a handler: log it, drop the connection.
				t.Log.Error("panic serving a websocket", "panic", p, "stack", string(debug.Stack()))
				_ = conn.CloseNow()
			}
		}()
		c.serve(ctx)
	}
	if !detach(ctx, serve) {
		serve()
	}
}

// dialect is what differs between the two protocols.
type dialect struct {
	subscribe, stop, next, complete string
	// keepAlive is the server's periodic message.
	keepAlive string
	// pings: graphql-transport-ws has ping/pong messages.
	pings bool
	// legacy: init refusals send connection_error first; operation errors
	// carry one error object; subscribing before the ack is an error
	// message, not a close.
	legacy bool
}

var (
	transportWS = dialect{subscribe: "subscribe", stop: "complete", next: "next", complete: "complete", keepAlive: "ping", pings: true}
	legacyWS    = dialect{subscribe: "start", stop: "stop", next: "data", complete: "complete", keepAlive: "ka", legacy: true}
)

type wsMessage struct {
	ID      string          `json:"id,omitempty"`
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

type wsConn struct {
	t    Websocket
	d    dialect
	conn *coderws.Conn
	// sock is conn's connection: messages written while it is corked
	// leave together (send).
	sock *corkConn
	exec graphql.GraphExecutor
	ip   string
	// place is the socket's in the quota, its caller's once init names one.
	place *SocketPlace

	// writeMu makes each send's batch whole on the wire.
	writeMu sync.Mutex

	// reauth re-checks a robot's credential: API keys can be revoked while
	// a socket is open (JWTs only expire, which a timer handles). nil for
	// any other caller.
	reauth func(context.Context) (*auth.Principal, error)

	mu        sync.Mutex
	initSeen  bool
	acked     bool
	principal *auth.Principal
	ops       map[string]*wsOp
	// shutting is set by the first shut; closed is closed once its close
	// handshake is over.
	shutting bool
	closed   chan struct{}
	// turn serialises what acts on the connection's operations: the
	// client's messages, key rechecks, the credential's expiry.
	turn sync.Mutex
	// finishing counts operations that ended on their own and are sending
	// their last message (added to under mu, with the op's removal).
	finishing sync.WaitGroup
	// draining is set when the server shuts down: no operation starts
	// after it. running counts the queries and mutations that have not
	// finished (added to under mu, unless draining).
	draining bool
	running  sync.WaitGroup
}

type wsOp struct {
	cancel context.CancelFunc
	done   bool // the client stopped it, or the server ended it: send nothing more
	// release returns the operation's place in the caller's quota; it is
	// called whenever the operation leaves the connection's ops.
	release func()
	// subscription tells what the operation is, for the connection's limits.
	subscription bool
}

// end stops op and returns its quota (under c.mu).
func (op *wsOp) end() {
	op.done = true
	op.cancel()
	op.release()
}

// MaxOperationID caps the length of a client's operation id: it is kept for
// the operation's life and echoed in each of its messages.
const MaxOperationID = 128

// serve runs the socket until it has closed. Its goroutine is the only one
// an idle socket holds: it reads the client's messages and acts on each
// in turn (on a goroutine of its own, so that the deep stacks of parsing
// and validating an operation are not kept by the reader), and timers do
// the rest (the init timeout, keep-alives, key rechecks, the credential's
// expiry, shutdown), each ending the socket through shut.
func (c *wsConn) serve(ctx context.Context) {
	stopShutdown := context.AfterFunc(ctx, c.drain)
	defer stopShutdown()

	// Timers an idle socket does not need are dropped: the init timeout
	// once the client said hello, the key recheck unless the caller is a
	// robot.
	initTimer := time.AfterFunc(c.t.InitTimeout, func() {
		if !c.initialised() {
			c.shut(CloseInitTimeout, "Connection initialisation timeout")
		}
	})
	defer func() {
		if initTimer != nil {
			initTimer.Stop()
		}
	}()
	// Timers that re-arm themselves are made idle, then armed, so that
	// their callbacks see them.
	var keepAlive *time.Timer
	keepAlive = time.AfterFunc(time.Hour, func() {
		if c.over() {
			return
		}
		if c.initialised() {
			if err := c.write(wsMessage{Type: c.d.keepAlive}); err != nil {
				c.t.Log.Debug("websocket keep-alive failed; closing it", "error", err)
				c.shut(CloseNormal, "")
				return
			}
		}
		keepAlive.Reset(c.t.KeepAlive)
	})
	keepAlive.Reset(c.t.KeepAlive)
	defer keepAlive.Stop()
	every := c.t.KeyRecheck
	if every <= 0 {
		every = recheckEvery
	}
	var recheck *time.Timer
	armRecheck := func() {
		if recheck != nil || !c.robot() {
			return
		}
		recheck = time.AfterFunc(time.Hour, func() {
			if c.over() {
				return
			}
			c.turn.Lock()
			// A check that could not be made is retried at the next tick.
			code, reason, _ := c.recheck(ctx)
			c.turn.Unlock()
			if code != 0 {
				c.shut(code, reason)
				return
			}
			recheck.Reset(every)
		})
		recheck.Reset(every)
	}
	armRecheck()
	defer func() {
		if recheck != nil {
			recheck.Stop()
		}
	}()
	var expiry *time.Timer
	defer func() {
		if expiry != nil {
			expiry.Stop()
		}
	}()
	// An acknowledged socket without a credential lives
	// Limits.AnonymousLifetime.
	var anonymous *time.Timer
	defer func() {
		if anonymous != nil {
			anonymous.Stop()
		}
	}()

	// Reads are never cancelled: cancelling a blocked coder/websocket Read
	// closes the connection at once, before shut could send the close
	// frame with its code. shut's Close ends a blocked read (its close
	// handshake).
	for {
		typ, data, err := c.conn.Read(context.Background())
		if err != nil {
			c.shut(CloseNormal, "") // the client closed or vanished, unless a close was under way
			break
		}
		// What the message decodes to is bounded as a request body's is,
		// until it is handled (a subscription's start included).
		release, err := c.t.Decoding.Take(ctx, func() string { return auth.AddressKey(c.ip) }, data)
		if err != nil {
			code, reason := CloseTryAgainLater, "Try again later: too many large messages are being handled"
			if fault.CodeOf(err) == fault.BadUserInput {
				code, reason = CloseBadRequest, closeReason(fmt.Sprintf("Invalid message received: over %d JSON elements", MaxDocumentElements))
			}
			c.shut(code, reason)
			break
		}
		code, reason, exp := c.handleAside(ctx, typ, data)
		if release != nil {
			release()
		}
		if code != 0 {
			c.shut(code, reason)
			break
		}
		if initTimer != nil && c.initialised() {
			initTimer.Stop()
			initTimer = nil
		}
		if anonymous == nil && c.anonymous() {
			anonymous = time.AfterFunc(c.t.Quota.anonymousLifetime(), func() {
				c.endThenShut(ctx, errAnonymousLifetime, CloseUnauthorized, "Unauthorized: a socket without a credential closes after a while; send one in connection_init")
			})
		}
		armRecheck()
		if !exp.IsZero() {
			expiry = time.AfterFunc(time.Until(exp), func() {
				c.endThenShut(ctx, fault.New(fault.Unauthenticated, "your credential has expired; reconnect with a fresh one"),
					CloseForbidden, "Forbidden: credential expired")
			})
		}
	}
	<-c.closed
}

// endThenShut ends every operation with err, in the connection's turn, and
// closes the socket with code and reason once the operations that ended
// just before (on their own) have sent their last message too, as endAll
// does for the others.
func (c *wsConn) endThenShut(ctx context.Context, err error, code int, reason string) {
	c.turn.Lock()
	c.endAll(ctx, err)
	c.turn.Unlock()
	c.finishing.Wait()
	c.shut(code, reason)
}

// handleAside decodes a client message and handles it on a goroutine of its
// own, and waits for it, in the connection's turn (timers that act on its
// operations take the same). The reader's stack stays as small as a read
// needs: decoding and handling (parsing, validating, authenticating) grow
// a stack that an idle socket would otherwise keep.
func (c *wsConn) handleAside(ctx context.Context, typ coderws.MessageType, data []byte) (code int, reason string, expires time.Time) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if p := recover(); p != nil {
				// As net/http does for a handler: log it, end the socket
				// (1011), tell the client nothing of it.
				c.t.Log.Error("panic handling a websocket message", "panic", p, "stack", string(debug.Stack()))
				code, reason = CloseInternalError, "Internal server error"
			}
		}()
		if typ == coderws.MessageText && !utf8.Valid(data) {
			code, reason = CloseNotUTF8, "Invalid message received: not UTF-8 text"
			return
		}
		var m wsMessage
		if typ != coderws.MessageText || json.Unmarshal(data, &m) != nil || m.Type == "" {
			code, reason = CloseBadRequest, "Invalid message received: expected a JSON object with a type"
			return
		}
		c.turn.Lock()
		defer c.turn.Unlock()
		code, reason, expires = c.handle(ctx, m)
	}()
	<-done
	return code, reason, expires
}

// drain ends the socket when the server shuts down, as http.Server's
// Shutdown ends a POST: its subscriptions stop at once, its queries and
// mutations finish and send their results (waiting claims are drained at
// shutdown, and the operation deadline bounds the rest; cut, a mutation
// would be rolled back or its result lost), then the socket closes with
// 1001, which graphql-ws clients retry.
func (c *wsConn) drain() {
	c.mu.Lock()
	c.draining = true
	for _, op := range c.ops {
		if op.subscription {
			op.end()
		}
	}
	c.mu.Unlock()
	c.running.Wait()
	c.shut(CloseGoingAway, "server shutting down")
}

// errShuttingDown refuses an operation sent while the socket drains.
var errShuttingDown = fault.New(fault.RateLimited, "the server is shutting down; retry against another replica or in a moment")

// over reports whether the socket is closing or closed: timers that re-arm
// themselves stop.
func (c *wsConn) over() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.shutting
}

// shut closes the socket with code and reason, once: every operation
// stops, then the close handshake runs (from whichever goroutine decided
// the end; a read blocked meanwhile ends with it). Later calls wait until
// the socket has closed.
func (c *wsConn) shut(code int, reason string) {
	c.mu.Lock()
	first := !c.shutting
	c.shutting = true
	c.mu.Unlock()
	if !first {
		<-c.closed
		return
	}
	c.stopAll()
	_ = c.conn.Close(coderws.StatusCode(code), reason)
	close(c.closed)
}

// requestReauth authenticates r's credentials again, as a robot's
// connection or stream does while it lasts: only the credential headers
// and the address are kept, not the request.
func requestReauth(a *auth.Authenticator, r *http.Request) func(context.Context) (*auth.Principal, error) {
	creds := http.Header{}
	for _, h := range []string{"Authorization", "X-Api-Key"} {
		if v := r.Header.Values(h); len(v) > 0 {
			creds[h] = v
		}
	}
	again := &http.Request{Header: creds, RemoteAddr: r.RemoteAddr}
	return func(ctx context.Context) (*auth.Principal, error) {
		return a.FromRequest(again.WithContext(auth.Recheck(ctx)))
	}
}

// initReauth authenticates a connection_init's credential again, as a
// robot's connection does while it lasts: only the credential member
// (auth.InitCredential) and the address are kept, not the payload, whose
// other members (a megabyte of {} decodes to tens of megabytes of maps)
// would otherwise live as long as the socket.
func initReauth(a *auth.Authenticator, payload map[string]any, ip string) func(context.Context) (*auth.Principal, error) {
	cred := auth.InitCredential(payload)
	return func(ctx context.Context) (*auth.Principal, error) {
		return a.FromInitPayload(auth.Recheck(ctx), cred, ip)
	}
}

// recheckEvery is how often a robot's connection re-checks its API key.
const recheckEvery = 30 * time.Second

// recheck re-authenticates a robot's connection (an API key may have been
// revoked since connection_init). When the key no longer passes, every
// operation ends with UNAUTHENTICATED and the socket is to close with 4403.
// When the check cannot be made (the database is unreachable: an outage is
// not a revocation; or the address is past its key lookups), the socket stays and unchecked is the client-fit
// reason; the error itself is logged, never sent.
func (c *wsConn) recheck(ctx context.Context) (code int, reason string, unchecked error) {
	c.mu.Lock()
	p := c.principal
	c.mu.Unlock()
	if p == nil || p.RobotID == uuid.Nil {
		return 0, "", nil
	}
	var err error = errNoCredential
	if c.reauth != nil { // a robot's credential is always kept; fail closed if not
		_, err = c.reauth(ctx)
	}
	switch {
	case err == nil:
		return 0, "", nil
	case fault.CodeOf(err) == fault.Internal || fault.CodeOf(err) == fault.RateLimited:
		// RATE_LIMITED: the address is past its lookups of keys (a valid
		// key the cache does not hold is not read then), not a refusal.
		c.t.Log.Warn("could not re-check a robot's API key; the websocket stays open until the next check", "robot", p.RobotID, "error", err)
		return 0, "", errCannotVerify
	}
	c.endAll(ctx, err)
	c.finishing.Wait()
	return CloseForbidden, closeReason("Forbidden: " + err.Error()), nil
}

// errNoCredential refuses a robot whose credential was not kept to be
// checked again (which does not happen).
var errNoCredential = fault.New(fault.Unauthenticated, "the connection's credential cannot be checked again; reconnect")

// errCannotVerify is what a client learns when its credential could not be
// checked because of a server fault: nothing of the fault itself.
var errCannotVerify = fault.New(fault.Internal, "the server cannot verify credentials right now; try again shortly")

// robot reports whether the connection's caller is a robot, whose API key
// is re-checked.
func (c *wsConn) robot() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.principal != nil && c.principal.RobotID != uuid.Nil
}

// anonymous reports whether the socket was acknowledged without a
// credential.
func (c *wsConn) anonymous() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.acked && c.principal == nil
}

// errAnonymousLifetime ends an anonymous socket's operations when its
// lifetime is over.
var errAnonymousLifetime = fault.New(fault.Unauthenticated, "a connection without a credential closes after a while; reconnect with one in connection_init")

func (c *wsConn) initialised() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.initSeen
}

// handle acts on one client message; a non-zero code closes the socket.
// expires is set when a connection is acknowledged for a credential that expires.
func (c *wsConn) handle(ctx context.Context, m wsMessage) (code int, reason string, expires time.Time) {
	switch m.Type {
	case "connection_init":
		return c.init(ctx, m)
	case "ping":
		if !c.d.pings {
			break
		}
		pong := wsMessage{Type: "pong"}
		if len(m.Payload) > 0 && string(m.Payload) != "null" {
			pong.Payload = m.Payload
		}
		if err := c.write(pong); err != nil {
			return CloseNormal, "", time.Time{}
		}
		return 0, "", time.Time{}
	case "pong":
		if c.d.pings {
			return 0, "", time.Time{}
		}
	case c.d.subscribe:
		return c.subscribe(ctx, m)
	case c.d.stop:
		c.mu.Lock()
		if op, ok := c.ops[m.ID]; ok {
			op.end()
			delete(c.ops, m.ID)
		}
		c.mu.Unlock()
		return 0, "", time.Time{}
	case "connection_terminate":
		if c.d.legacy {
			return CloseNormal, "", time.Time{}
		}
	}
	return CloseBadRequest, "Invalid message received: unexpected type " + truncate(m.Type, 40), time.Time{}
}

func (c *wsConn) init(ctx context.Context, m wsMessage) (int, string, time.Time) {
	c.mu.Lock()
	again := c.initSeen
	c.initSeen = true
	c.mu.Unlock()
	if again {
		return CloseTooManyInitRequests, "Too many initialisation requests", time.Time{}
	}
	var payload map[string]any
	if len(m.Payload) > 0 && string(m.Payload) != "null" {
		if err := json.Unmarshal(m.Payload, &payload); err != nil {
			return CloseBadRequest, "Invalid message received: connection_init payload must be an object", time.Time{}
		}
	}
	p, err := c.t.Auth.FromInitPayload(ctx, payload, c.ip)
	if err == nil && p != nil && p.RobotID != uuid.Nil {
		c.reauth = initReauth(c.t.Auth, payload, c.ip)
	}
	if err != nil {
		code, reason := CloseForbidden, "Forbidden: "+err.Error()
		switch fault.CodeOf(err) {
		case fault.Internal:
			// Not a refusal: the credential could not be checked (an outage).
			c.t.Log.Warn("could not check a websocket's credentials", "error", err)
			err, code, reason = errCannotVerify, CloseTryAgainLater, "Try again later: "+errCannotVerify.Message
		case fault.RateLimited:
			// Not checked either: the address is past its key lookups.
			code, reason = CloseTryAgainLater, "Try again later: "+err.Error()
		}
		if c.d.legacy {
			_ = c.write(wsMessage{Type: "connection_error", Payload: mustJSON(present(ctx, err))})
		}
		return code, closeReason(reason), time.Time{}
	}
	// The socket counts as its caller's from now on: its credential's, or
	// its address's when it has none.
	c.mu.Lock()
	caller := c.principal
	c.mu.Unlock()
	if p != nil {
		caller = p
	}
	if err := c.place.Move(callerKey(caller, c.ip)); err != nil {
		if c.d.legacy {
			_ = c.write(wsMessage{Type: "connection_error", Payload: mustJSON(present(ctx, err))})
		}
		return CloseTryAgainLater, closeReason("Try again later: " + err.Error()), time.Time{}
	}
	c.mu.Lock()
	if p != nil {
		c.principal = p
	}
	p = c.principal
	c.acked = true
	c.mu.Unlock()
	metrics.RequestOf(ctx).SetCaller(p)
	if err := c.write(wsMessage{Type: "connection_ack"}); err != nil {
		return CloseNormal, "", time.Time{}
	}
	if c.d.legacy {
		_ = c.write(wsMessage{Type: "ka"})
	}
	if p != nil && !p.ExpiresAt.IsZero() {
		return 0, "", p.ExpiresAt
	}
	return 0, "", time.Time{}
}

func (c *wsConn) subscribe(ctx context.Context, m wsMessage) (int, string, time.Time) {
	var params graphql.RawParams
	// Numbers as json.Number, as over HTTP: a variable's digits past
	// float64's reach a JSON argument as sent.
	if m.ID == "" || decodeJSON(string(m.Payload), &params) != nil || params.Query == "" && params.Extensions["persistedQuery"] == nil {
		return CloseBadRequest, "Invalid message received: " + c.d.subscribe + " needs an id and a payload with a query", time.Time{}
	}
	if len(m.ID) > MaxOperationID {
		return CloseBadRequest, closeReason(fmt.Sprintf("Invalid message received: an operation id has at most %d bytes", MaxOperationID)), time.Time{}
	}
	c.mu.Lock()
	acked := c.acked
	_, exists := c.ops[m.ID]
	c.mu.Unlock()
	if !acked {
		if c.d.legacy {
			_ = c.write(wsMessage{ID: m.ID, Type: "error", Payload: mustJSON(&gqlerror.Error{Message: "send connection_init first"})})
			return 0, "", time.Time{}
		}
		return CloseUnauthorized, "Unauthorized", time.Time{}
	}
	if exists {
		return CloseSubscriberExists, closeReason("Subscriber for " + m.ID + " already exists"), time.Time{}
	}
	if code, reason, unchecked := c.recheck(ctx); code != 0 {
		return code, reason, time.Time{}
	} else if unchecked != nil {
		c.refuse(ctx, m.ID, unchecked)
		return 0, "", time.Time{}
	}
	// An operation ends by its cancel (op.end: the client's complete, the
	// socket's end), not with ctx, which shutdown cancels: drain lets
	// queries and mutations finish.
	opCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c.mu.Lock()
	p := c.principal
	c.mu.Unlock()
	if p != nil {
		opCtx = auth.WithPrincipal(opCtx, p)
	}
	// Parsed and validated here, in order, so that what the operation is
	// (a subscription or not) is known before it takes a place.
	base := opCtx
	opCtx, rc, errs := prepare(opCtx, c.exec, &params)
	if errs != nil {
		cancel()
		_ = c.write(c.errorMessage(m.ID, errs))
		return 0, "", time.Time{}
	}
	op := &wsOp{cancel: cancel, release: func() {}, subscription: isSubscription(rc)}
	if err := c.admit(opCtx, op); err != nil {
		cancel()
		c.refuse(ctx, m.ID, err)
		return 0, "", time.Time{}
	}
	// A socket that is draining, or was shut while this message was
	// handled (a failed keep-alive write, another operation's write
	// timeout: shut does not wait for the message's turn), takes no new
	// operation: shut's stopAll has ended those it had, and nothing would
	// end one added after it.
	c.mu.Lock()
	draining, shut := c.draining, c.shutting
	if !draining && !shut {
		c.ops[m.ID] = op
		if !op.subscription {
			c.running.Add(1)
		}
	}
	c.mu.Unlock()
	if draining || shut {
		cancel()
		op.release()
		if shut {
			c.t.Log.Debug("websocket operation dropped: its socket closed while it was read", "id", m.ID)
		} else {
			c.refuse(ctx, m.ID, errShuttingDown)
		}
		return 0, "", time.Time{}
	}
	c.start(base, opCtx, m.ID, op, rc)
	return 0, "", time.Time{}
}

// MaxRunningPerConnection caps the queries and mutations one websocket runs
// at once (subscriptions have their own limit): each holds a goroutine and
// possibly a database connection until it finishes.
const MaxRunningPerConnection = 100

// admit checks a new operation against the connection's limits and, for a
// subscription, takes its place in its caller's quota (op.release returns
// it). Messages are handled one at a time (handleAside), so the counts
// cannot be overtaken between the check and the registration.
func (c *wsConn) admit(ctx context.Context, op *wsOp) error {
	subs, others := 0, 0
	c.mu.Lock()
	for _, o := range c.ops {
		if o.subscription {
			subs++
		} else {
			others++
		}
	}
	c.mu.Unlock()
	if !op.subscription {
		if others >= MaxRunningPerConnection {
			return limitError("RUNNING_QUERIES_PER_CONNECTION", MaxRunningPerConnection,
				"this connection already runs %d queries and mutations at once, the most one connection may; wait for one to finish", MaxRunningPerConnection)
		}
		return nil
	}
	if max := c.t.Quota.perConnection(); subs >= max {
		return limitError("MAX_SUBSCRIPTIONS_PER_CONNECTION", max,
			"this connection already has %d subscriptions, the most one connection may (MAX_SUBSCRIPTIONS_PER_CONNECTION); complete one before starting another", max)
	}
	release, err := c.t.Quota.Hold(ctx)
	if err != nil {
		return err
	}
	op.release = release
	return nil
}

// refuse answers a subscribe message with an error for its id, without
// running it; the socket stays open and the id may be used again.
func (c *wsConn) refuse(ctx context.Context, id string, err error) {
	metrics.SentError(ctx, string(fault.CodeOf(err)))
	_ = c.write(c.errorMessage(id, gqlerror.List{present(ctx, err)}))
}

// start runs one prepared operation and reports its results under id. A
// shared subscription joins its group and holds no goroutine while it
// waits (the group's writers call its write); any other operation runs on
// a goroutine of its own. Either way a subscription is registered with the
// hub before start returns, so before the socket's next message is read:
// a client that sends a ping after its subscribe has, with the pong, a
// live subscription. base is the operation's context before it was
// prepared: a member keeps it, not the prepared operation, which its
// group holds once for all.
func (c *wsConn) start(base, ctx context.Context, id string, op *wsOp, rc *graphql.OperationContext) {
	// Each result is framed around its payload as it was encoded (once,
	// and shared by a group's members), not encoded again; the results a
	// group's writer finds waiting leave in one send.
	prefix := envelopePrefix(id, c.d.next)
	// writing is called once the socket's writer is this operation's.
	write := func(payloads [][]byte, writing func()) error {
		if c.isDone(op) {
			return context.Canceled
		}
		return c.send(func(text func(prefix, payload, suffix []byte) error) error {
			writing()
			for _, payload := range payloads {
				if err := text(prefix, payload, envelopeEnd); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if key, ok := c.t.Fanout.shareable(ctx, rc); ok {
		c.t.Fanout.attach(base, ctx, c.exec, rc, key, c.place, write,
			func(out outcome) { c.finish(base, id, op, out) })
		return
	}
	// Its turns wait for room on the socket (AwaitRoom), and each result
	// counts until the writer takes it, not while it is written: a
	// subscription's next result, a query's or a mutation's answer (which
	// has run, and a mutation committed, so it always waits).
	d := dispatch(WithPlace(ctx, c.place), c.exec, rc)
	go func() {
		c.finish(ctx, id, op, d.run(func(payload []byte) error {
			n := len(payload)
			c.place.Hold(n)
			var once sync.Once
			release := func() { once.Do(func() { c.place.Release(n) }) }
			defer release()
			return write([][]byte{payload}, release)
		}))
	}()
}

// envelopeEnd closes a result message after its payload.
var envelopeEnd = []byte("}")

// finish reports how operation id ended: its error, or its completion,
// unless the client stopped it or the server ended it already.
func (c *wsConn) finish(ctx context.Context, id string, op *wsOp, out outcome) {
	if !op.subscription {
		defer c.running.Done() // last: after its last message
	}
	defer op.cancel()
	defer op.release()
	c.mu.Lock()
	done := op.done
	op.done = true
	if c.ops[id] == op {
		delete(c.ops, id)
	}
	op.release() // before the last message: a client may reuse the place once it has it
	// Its work is over: what it holds (a hub subscriber, its resolver's
	// goroutine) goes before the last message, which a client that does
	// not read may hold up until the write timeout.
	op.cancel()
	if !done {
		c.finishing.Add(1)
	}
	c.mu.Unlock()
	if done {
		return
	}
	defer c.finishing.Done()
	if out.stopped {
		return
	}
	if out.errs != nil {
		_ = c.write(c.errorMessage(id, out.errs))
		return // no complete after error
	}
	_ = c.write(wsMessage{ID: id, Type: c.d.complete})
}

func (c *wsConn) errorMessage(id string, errs gqlerror.List) wsMessage {
	if c.d.legacy {
		// subscriptions-transport-ws clients read one error object.
		return wsMessage{ID: id, Type: "error", Payload: mustJSON(errs[0])}
	}
	return wsMessage{ID: id, Type: "error", Payload: mustJSON(errs)}
}

func (c *wsConn) isDone(op *wsOp) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return op.done
}

// endAll ends every running operation with err.
func (c *wsConn) endAll(ctx context.Context, err error) {
	c.mu.Lock()
	ops := c.ops
	c.ops = map[string]*wsOp{}
	for _, op := range ops {
		op.end()
	}
	c.mu.Unlock()
	for id := range ops {
		metrics.SentError(ctx, string(fault.CodeOf(err)))
		_ = c.write(c.errorMessage(id, gqlerror.List{present(ctx, err)}))
	}
}

func (c *wsConn) stopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, op := range c.ops {
		op.end()
	}
}

// envelopePrefix is a result message of operation id up to its payload:
// `{"id":"...","type":"next","payload":`; the message is the prefix, the
// payload and `}`, as json.Marshal would write a wsMessage.
func envelopePrefix(id, typ string) []byte {
	idJSON, _ := json.Marshal(id)
	typJSON, _ := json.Marshal(typ)
	b := append([]byte(`{"id":`), idJSON...)
	b = append(append(append(b, `,"type":`...), typJSON...), `,"payload":`...)
	return b
}

// write sends one message; a client that does not take it within the write
// timeout is closed, since it cannot keep up.
func (c *wsConn) write(m wsMessage) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return c.send(func(text func(prefix, payload, suffix []byte) error) error { return text(data, nil, nil) })
}

// send writes the messages fill frames (each the concatenation of text's
// three parts), each a websocket message of its own, in one write to the
// socket: a burst costs one system call, not one per message. A client
// that does not take the batch within the write timeout is closed with
// 1008, since it cannot keep up; any failed write closes the connection
// (its stream may end inside a frame).
func (c *wsConn) send(fill func(text func(prefix, payload, suffix []byte) error) error) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.sock.cork()
	err := fill(c.sock.text)
	if ferr := c.sock.flush(); ferr != nil {
		_ = c.conn.CloseNow()
		if errors.Is(ferr, os.ErrDeadlineExceeded) {
			// The close frame cannot reach the client; this ends the
			// socket (on its own goroutine: the writer may hold a turn).
			go c.shut(1008, "the client is not reading its messages")
		}
		return ferr
	}
	return err
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		return json.RawMessage(`null`)
	}
	return b
}

// closeReason fits a reason into a close frame (123 bytes).
func closeReason(s string) string { return truncate(s, 123) }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
