package live

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// This file is the connection under a websocket. coder/websocket flushes
// every message it writes with its own write to the socket, and keeps the
// HTTP server's 4 KiB read and write buffers for the socket's life. A
// subscriber that has several results waiting (a burst, or a fan-out
// catching up) would cost one system call, and one TCP segment, per
// message; and an idle subscriber would hold 8 KiB of buffers it rarely
// uses. So the upgrade hands coder/websocket a corkConn and small buffers:
// the transport frames its messages itself into a batch (text), anything
// coder/websocket writes meanwhile joins it, and one write sends the
// batch.

// socketBuffer is the size of coder/websocket's read and write buffers over
// a corkConn. Larger reads and writes go around a buffer, so a small one
// costs little and saves most of 8 KiB per socket; it holds any control
// frame whole (at most 2+125 bytes), so coder/websocket's pongs and close
// frames reach the socket in one write.
const socketBuffer = 256

// maxPooledBatch is the largest batch buffer kept for reuse: a rare large
// batch does not pin its memory.
const maxPooledBatch = 64 << 10

var batchPool = sync.Pool{New: func() any { return new([]byte) }}

// corkConn is a hijacked connection whose writes can be held back and sent
// together. Every write to the socket happens under mu, so a write that
// arrives during a flush (coder/websocket's own pongs and close frames)
// follows the batch on the wire, as it followed it in time.
//
// The transport frames its messages itself, straight into the batch
// (text), so coder/websocket writes only control frames: each reaches
// Write whole (its buffer holds the largest), which is how a close frame
// is seen, after which no message may follow.
type corkConn struct {
	net.Conn
	// timeout bounds a write that blocks (0: none). The deadline is set
	// ahead and renewed when less than half of it is left, rather than
	// set and cleared around every write.
	timeout  time.Duration
	deadline time.Time

	mu sync.Mutex
	// buf holds what is written while the connection is corked (from
	// batchPool); nil while it is not.
	buf       *[]byte
	closeSent bool
}

// Write sends p, or holds it while the connection is corked.
func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(p) > 0 && p[0] == 0x88 { // FIN and the close opcode: a close frame
		c.closeSent = true
	}
	if c.buf != nil {
		*c.buf = append(*c.buf, p...)
		return len(p), nil
	}
	c.arm()
	return c.Conn.Write(p)
}

// text appends a text message made of prefix, payload and suffix to the
// batch, as one unmasked frame (RFC 6455 5.2). The connection must be
// corked.
func (c *corkConn) text(prefix, payload, suffix []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeSent {
		return net.ErrClosed
	}
	if c.buf == nil {
		return errors.New("live: a message framed outside a batch")
	}
	n := len(prefix) + len(payload) + len(suffix)
	b := append(*c.buf, 0x81) // FIN, text
	switch {
	case n < 126:
		b = append(b, byte(n))
	case n < 1<<16:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = append(append(append(b, prefix...), payload...), suffix...)
	*c.buf = b
	return nil
}

// arm makes sure a blocked write ends within the timeout (under mu).
func (c *corkConn) arm() {
	if c.timeout <= 0 {
		return
	}
	now := time.Now()
	if c.deadline.Sub(now) < c.timeout/2 {
		c.deadline = now.Add(c.timeout)
		_ = c.Conn.SetWriteDeadline(c.deadline)
	}
}

// cork holds writes until flush.
func (c *corkConn) cork() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buf == nil {
		c.buf = batchPool.Get().(*[]byte)
	}
}

// flush sends what was held in one write, and stops holding writes. The
// write has at least half the timeout to finish; one that times out
// leaves the stream cut in the middle of a frame, so the caller closes
// the connection.
func (c *corkConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	buf := c.buf
	c.buf = nil
	if buf == nil {
		return nil
	}
	defer func() {
		if cap(*buf) <= maxPooledBatch {
			*buf = (*buf)[:0]
			batchPool.Put(buf)
		}
	}()
	if len(*buf) == 0 {
		return nil
	}
	c.arm()
	_, err := c.Conn.Write(*buf)
	return err
}

// closeFlush bounds the write of what was held when the connection closes.
const closeFlush = 5 * time.Second

// Close sends what is held, then closes the connection: coder/websocket
// closes it right after writing a close frame, which may have joined a
// batch not yet flushed.
func (c *corkConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buf != nil && len(*c.buf) > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(closeFlush))
		_, _ = c.Conn.Write(*c.buf)
	}
	c.buf = nil
	return c.Conn.Close()
}

// corkingWriter is the upgrade's ResponseWriter as coder/websocket sees it:
// its Hijack hands over a corkConn and buffers of socketBuffer bytes.
type corkingWriter struct {
	http.ResponseWriter
	timeout time.Duration // the corkConn's
	conn    *corkConn     // set by Hijack
}

// Unwrap returns the ResponseWriter it wraps (for http.ResponseController).
func (w *corkingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack implements http.Hijacker over the server's own hijack.
func (w *corkingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = &corkConn{Conn: nc, timeout: w.timeout}
	// Bytes the client sent after its upgrade request, already read into
	// the server's buffer, stay first in line: they are copied into the
	// new reader's buffer, where coder/websocket looks for them.
	r := bufio.NewReaderSize(w.conn, socketBuffer)
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ := brw.Reader.Peek(n)
		r = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(early)), w.conn), max(socketBuffer, n))
		_, _ = r.Peek(n) // from the copy alone: it holds n bytes
	}
	return w.conn, bufio.NewReadWriter(r, bufio.NewWriterSize(w.conn, socketBuffer)), nil
}
