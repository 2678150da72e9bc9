package live

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *countingConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

// tcpPair is a loopback TCP connection's two ends.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	server = <-accepted
	require.NotNil(t, server)
	t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
	require.NoError(t, client.SetDeadline(time.Now().Add(10*time.Second)))
	return server, client
}

// TestCorkConnSendsABatchInOneWrite checks the corked connection: writes
// while corked reach the socket as one write at flush, writes outside a
// cork go straight through, and Close sends what is held before closing
// (a close frame may have joined a batch).
func TestCorkConnSendsABatchInOneWrite(t *testing.T) {
	t.Parallel()
	server, client := tcpPair(t)
	counted := &countingConn{Conn: server}
	c := &corkConn{Conn: counted}

	c.cork()
	for _, part := range []string{"one", "two", "three"} {
		n, err := c.Write([]byte(part))
		require.NoError(t, err)
		require.Equal(t, len(part), n)
	}
	require.Zero(t, counted.count(), "nothing leaves while corked")
	require.NoError(t, c.flush(time.Second))
	require.Equal(t, 1, counted.count(), "the batch leaves in one write")
	got := make([]byte, len("onetwothree"))
	_, err := io.ReadFull(client, got)
	require.NoError(t, err)
	require.Equal(t, "onetwothree", string(got))

	_, err = c.Write([]byte("direct"))
	require.NoError(t, err)
	require.Equal(t, 2, counted.count(), "uncorked writes go straight through")
	got = make([]byte, len("direct"))
	_, err = io.ReadFull(client, got)
	require.NoError(t, err)

	require.NoError(t, c.flush(time.Second), "a flush with nothing held writes nothing")
	require.Equal(t, 2, counted.count())

	c.cork()
	_, _ = c.Write([]byte("held"))
	require.NoError(t, c.Close())
	rest, err := io.ReadAll(client)
	require.NoError(t, err)
	require.Equal(t, "held", string(rest), "Close sent what was held, then closed")
}

// TestCorkConnFlushTimesOut checks that a flush to a client that does not
// read ends at its deadline with os.ErrDeadlineExceeded, for the caller to
// close the connection.
func TestCorkConnFlushTimesOut(t *testing.T) {
	t.Parallel()
	server, _ := tcpPair(t)
	c := &corkConn{Conn: server}
	c.cork()
	big := bytes.Repeat([]byte("x"), 64<<20) // far more than the socket buffers hold
	_, _ = c.Write(big)
	err := c.flush(200 * time.Millisecond)
	require.Error(t, err)
	require.True(t, errors.Is(err, os.ErrDeadlineExceeded), "got %v", err)
}
