package live

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
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
	c := &corkConn{Conn: counted, timeout: time.Second}

	c.cork()
	for _, part := range []string{"one", "two", "three"} {
		n, err := c.Write([]byte(part))
		require.NoError(t, err)
		require.Equal(t, len(part), n)
	}
	require.Zero(t, counted.count(), "nothing leaves while corked")
	require.NoError(t, c.flush())
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

	require.NoError(t, c.flush(), "a flush with nothing held writes nothing")
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
	c := &corkConn{Conn: server, timeout: 200 * time.Millisecond}
	c.cork()
	big := bytes.Repeat([]byte("x"), 64<<20) // far more than the socket buffers hold
	_, _ = c.Write(big)
	err := c.flush()
	require.Error(t, err)
	require.True(t, errors.Is(err, os.ErrDeadlineExceeded), "got %v", err)
}

// TestCorkConnFramesText checks the frames text writes (RFC 6455 5.2: the
// 7-bit, 16-bit and 64-bit lengths) by reading them back frame by frame,
// and that nothing is framed after a close frame.
func TestCorkConnFramesText(t *testing.T) {
	t.Parallel()
	server, client := tcpPair(t)
	c := &corkConn{Conn: server, timeout: time.Second}
	sizes := []int{0, 1, 125, 126, 65535, 65536, 70000}
	c.cork()
	for _, n := range sizes {
		payload := bytes.Repeat([]byte("p"), n)
		require.NoError(t, c.text([]byte("<"), payload, []byte(">")))
	}
	require.NoError(t, c.flush())
	for _, n := range sizes {
		body := readServerFrame(t, client)
		require.Len(t, body, n+2, "the length of a %d-byte payload with its envelope", n)
		require.Equal(t, "<"+strings.Repeat("p", n)+">", string(body))
	}

	// A close frame (as coder/websocket writes it) ends the messages.
	_, err := c.Write([]byte{0x88, 0x02, 0x03, 0xe8})
	require.NoError(t, err)
	c.cork()
	require.ErrorIs(t, c.text([]byte("late"), nil, nil), net.ErrClosed)
	require.NoError(t, c.flush())
}

// TestCorkConnRenewsItsDeadline checks that a deadline left from an
// earlier write does not fail a later one: a write renews it when less
// than half of the timeout is left.
func TestCorkConnRenewsItsDeadline(t *testing.T) {
	t.Parallel()
	server, client := tcpPair(t)
	c := &corkConn{Conn: server, timeout: time.Second}
	past := time.Now().Add(-time.Minute)
	require.NoError(t, server.SetWriteDeadline(past))
	c.deadline = past
	_, err := c.Write([]byte("x"))
	require.NoError(t, err, "the expired deadline was renewed")
	c.cork()
	require.NoError(t, c.text([]byte("y"), nil, nil))
	require.NoError(t, c.flush())
	got := make([]byte, 4)
	_, err = io.ReadFull(client, got)
	require.NoError(t, err)
	require.Equal(t, "x\x81\x01y", string(got))
}

// readServerFrame reads one frame a server sends (RFC 6455 5.2: final,
// text, unmasked, of any of the three lengths) and returns its payload.
// socket_test.go uses it too (export_test.go).
func readServerFrame(t *testing.T, r io.Reader) []byte {
	t.Helper()
	var h [2]byte
	_, err := io.ReadFull(r, h[:])
	require.NoError(t, err)
	require.Equal(t, byte(0x81), h[0], "FIN and text")
	require.Zero(t, h[1]&0x80, "a server's frame is not masked")
	size := int(h[1] & 0x7f)
	switch size {
	case 126:
		var l [2]byte
		_, err = io.ReadFull(r, l[:])
		require.NoError(t, err)
		size = int(l[0])<<8 | int(l[1])
	case 127:
		var l [8]byte
		_, err = io.ReadFull(r, l[:])
		require.NoError(t, err)
		size = 0
		for _, b := range l {
			size = size<<8 | int(b)
		}
	}
	body := make([]byte, size)
	_, err = io.ReadFull(r, body)
	require.NoError(t, err)
	return body
}
