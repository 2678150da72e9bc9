package graph_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// A request that merely asks for a stream stays under the server's read
// timeout until it is one: a client trickling a body, whatever its Accept or
// Upgrade headers say, is cut off by the timeout like any other.
func TestStreamsKeepTimeoutsUntilEstablished(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	srv := &http.Server{Handler: s.Handler, ReadTimeout: 300 * time.Millisecond, ReadHeaderTimeout: time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	// trickle sends headers and the start of a body that never ends, then
	// waits for the server to give up on it.
	trickle := func(t *testing.T, headers string) {
		t.Helper()
		conn, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		defer conn.Close()
		_, err = io.WriteString(conn, headers+"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"query\":")
		require.NoError(t, err)
		// The server must end the request; a generous deadline bounds
		// the wait, it is not what the test measures.
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
		_, err = io.Copy(io.Discard, bufio.NewReader(conn))
		require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the server still holds a request whose body never came")
	}
	t.Run("EventStreamPost", func(t *testing.T) {
		trickle(t, "POST /graphql HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n")
	})
	t.Run("UpgradeHeaderOnPost", func(t *testing.T) {
		trickle(t, "POST /graphql HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
	})
}
