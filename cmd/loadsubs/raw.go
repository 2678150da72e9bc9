package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// This file is the -lean mode's subscriber that is not sampled: a websocket
// spoken by hand over a plain TCP connection, which counts `next` frames in
// a read buffer without a message object, an allocation or a context per
// message. One read takes every frame the server sent since the last, so
// the tool's cost per delivery falls with the server's (a server that
// batches its writes is not hidden behind a client that reads a frame at a
// time), and the two cores the tool shares with the server go to the
// server.

// rawBuffer is a raw subscriber's read buffer: several frames per read.
const rawBuffer = 4 << 10

// rawConn is a raw subscriber's connection.
type rawConn struct {
	nc net.Conn
	br *bufio.Reader
}

// dialRaw opens a graphql-transport-ws websocket by hand and sends init
// and subscribe, as dial does.
func dialRaw(ctx context.Context, wsURL, token, query string, vars map[string]any) (*rawConn, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = nc.Close()
		}
	}()
	if dl, has := ctx.Deadline(); has {
		_ = nc.SetDeadline(dl)
	}
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n",
		u.RequestURI(), u.Host, base64.StdEncoding.EncodeToString(key))
	if _, err := io.WriteString(nc, req); err != nil {
		return nil, err
	}
	c := &rawConn{nc: nc, br: bufio.NewReaderSize(nc, rawBuffer)}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, fmt.Errorf("websocket upgrade answered %s", resp.Status)
	}
	if err := c.writeJSON(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + token}}); err != nil {
		return nil, err
	}
	var ack struct{ Type string }
	if err := c.next(func(p []byte) error { return json.Unmarshal(p, &ack) }); err != nil || ack.Type != "connection_ack" {
		return nil, fmt.Errorf("connection_init answered %q: %v", ack.Type, err)
	}
	if err := c.writeJSON(map[string]any{"id": "1", "type": "subscribe", "payload": map[string]any{"query": query, "variables": vars}}); err != nil {
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	ok = true
	return c, nil
}

// writeJSON sends v as one masked text frame (RFC 6455 5.2-5.3).
func (c *rawConn) writeJSON(v any) error {
	p, err := json.Marshal(v)
	if err != nil {
		return err
	}
	frame := []byte{0x81}
	switch n := len(p); {
	case n < 126:
		frame = append(frame, 0x80|byte(n))
	case n < 1<<16:
		frame = append(frame, 0x80|126, byte(n>>8), byte(n))
	default:
		frame = append(frame, 0x80|127)
		frame = binary.BigEndian.AppendUint64(frame, uint64(n))
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	frame = append(frame, mask[:]...)
	for i, b := range p {
		frame = append(frame, b^mask[i%4])
	}
	_, err = c.nc.Write(frame)
	return err
}

// next reads up to the next text frame and calls fn with its payload,
// which is valid only during the call (it is in the read buffer when it
// fits). Control frames are passed over (a close frame ends the
// connection: io.EOF); messages are single frames, as the server sends
// them.
func (c *rawConn) next(fn func(payload []byte) error) error {
	for {
		var h [2]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return err
		}
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var l [2]byte
			if _, err := io.ReadFull(c.br, l[:]); err != nil {
				return err
			}
			n = uint64(binary.BigEndian.Uint16(l[:]))
		case 127:
			var l [8]byte
			if _, err := io.ReadFull(c.br, l[:]); err != nil {
				return err
			}
			n = binary.BigEndian.Uint64(l[:])
		}
		if n > 1<<20 {
			return errors.New("a frame over 1 MiB")
		}
		var p []byte
		if n <= rawBuffer {
			var err error
			if p, err = c.br.Peek(int(n)); err != nil {
				return err
			}
		} else {
			p = make([]byte, n)
			if _, err := io.ReadFull(c.br, p); err != nil {
				return err
			}
		}
		opcode := h[0] & 0x0f
		var err error
		switch opcode {
		case 0x1:
			err = fn(p)
		case 0x8:
			return io.EOF
		}
		if n <= rawBuffer {
			_, _ = c.br.Discard(int(n))
		}
		if opcode == 0x1 || err != nil {
			return err
		}
	}
}

// countRaw is count for a raw subscriber.
func (l *load) countRaw(ctx context.Context, s *subscriber) {
	var err error
	for err == nil {
		err = s.raw.next(func(data []byte) error {
			switch {
			case bytes.Contains(data, []byte(`"type":"ping"`)):
				return s.raw.writeJSON(map[string]any{"type": "pong"})
			case bytes.Contains(data, []byte(`"type":"pong"`)):
				return nil
			case !bytes.Contains(data, []byte(`"type":"next"`)):
				msg := string(data)
				s.ended.CompareAndSwap(nil, &msg)
				return nil
			}
			l.counted(s, data)
			return nil
		})
	}
	if err != nil && ctx.Err() == nil {
		msg := "connection closed: " + err.Error()
		s.ended.CompareAndSwap(nil, &msg)
	}
}
