// Package loadclient is a lean HTTP/1.1 client for load generators: one
// keep-alive connection per Conn, used by one goroutine at a time, each
// request written in one write from bytes the caller keeps.
//
// A load generator shares the benchmark machine with the servers it
// measures, so its own CPU per request is taken from them, and most from
// the fastest server, which needs the cores most. net/http's Client hands
// every request to two goroutines of its Transport and back (a write loop
// and a read loop per connection) and builds a Request, a Response and
// their Header maps (bench/peer measures what each costs). A Conn writes the request line, the caller's header lines and the body in
// one write, and reads the answer (its status, its body by Content-Length
// or in chunks) on the calling goroutine, into buffers it keeps.
package loadclient

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"time"
)

// Conn posts requests to one URL over one keep-alive connection, dialled
// on first use and again after the server closed it. It is not safe for
// concurrent use.
type Conn struct {
	addr   string
	prefix []byte // "POST /path HTTP/1.1\r\nHost: host\r\n"
	conn   net.Conn
	br     *bufio.Reader
	req    []byte       // the request being written, reused
	out    bytes.Buffer // the last response body, reused
	// Timeout bounds each request (dial, write and read) when the context
	// has no earlier deadline; 0 means none.
	Timeout time.Duration
}

// New returns a Conn for posting to rawURL (http only).
func New(rawURL string) (*Conn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("loadclient: %q is not an http:// URL", rawURL)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	return &Conn{addr: addr, prefix: fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: %s\r\n", u.RequestURI(), u.Host)}, nil
}

// Post sends body with header (complete header lines, each ending in
// "\r\n", such as "Content-Type: application/json\r\n") and returns the
// response's status code and body. The body is valid until the next call.
func (c *Conn) Post(ctx context.Context, header string, body []byte) (int, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	deadline, ok := ctx.Deadline()
	if c.Timeout > 0 && (!ok || time.Until(deadline) > c.Timeout) {
		deadline = time.Now().Add(c.Timeout)
	}
	if c.conn == nil {
		d := net.Dialer{Deadline: deadline}
		conn, err := d.DialContext(ctx, "tcp", c.addr)
		if err != nil {
			return 0, nil, err
		}
		c.conn, c.br = conn, bufio.NewReaderSize(conn, 16<<10)
	}
	_ = c.conn.SetDeadline(deadline) // the zero time: none
	// A cancelled context ends a blocked write or read at once.
	conn := c.conn
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	status, out, err := c.roundTrip(header, body)
	if !stop() || err != nil {
		c.Close()
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = ctxErr
		}
		return 0, nil, err
	}
	return status, out, nil
}

func (c *Conn) roundTrip(header string, body []byte) (int, []byte, error) {
	c.req = append(c.req[:0], c.prefix...)
	c.req = append(c.req, header...)
	c.req = append(c.req, "Content-Length: "...)
	c.req = strconv.AppendInt(c.req, int64(len(body)), 10)
	c.req = append(c.req, "\r\n\r\n"...)
	c.req = append(c.req, body...)
	if _, err := c.conn.Write(c.req); err != nil {
		return 0, nil, err
	}
	return c.readResponse()
}

// readResponse reads one response: its status line, the headers it needs
// (Content-Length, Transfer-Encoding, Connection) and its body, without
// allocating once the buffers have grown.
func (c *Conn) readResponse() (int, []byte, error) {
	line, err := c.line()
	if err != nil {
		return 0, nil, err
	}
	// "HTTP/1.1 200 OK"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0, nil, fmt.Errorf("loadclient: malformed status line %q", line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, nil, fmt.Errorf("loadclient: malformed status line %q", line)
	}
	length, chunked, closing := -1, false, false
	for {
		if line, err = c.line(); err != nil {
			return 0, nil, err
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, nil, fmt.Errorf("loadclient: malformed header %q", line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(value)); err != nil || length < 0 {
				return 0, nil, fmt.Errorf("loadclient: malformed Content-Length %q", value)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			closing = bytes.EqualFold(value, []byte("close"))
		}
	}
	c.out.Reset()
	switch {
	case status == 204 || status == 304:
		// no body
	case chunked:
		err = c.readChunks()
	case length >= 0:
		_, err = io.CopyN(&c.out, c.br, int64(length))
	case closing:
		_, err = c.out.ReadFrom(c.br)
	default:
		err = errors.New("loadclient: a response with neither a length nor chunks")
	}
	if err != nil {
		return 0, nil, err
	}
	if closing {
		c.Close() // the server ends the connection; the next call dials
	}
	return status, c.out.Bytes(), nil
}

// readChunks reads a chunked body into c.out.
func (c *Conn) readChunks() error {
	for {
		line, err := c.line()
		if err != nil {
			return err
		}
		size, _, _ := bytes.Cut(line, []byte(";"))
		n, err := strconv.ParseInt(string(bytes.TrimSpace(size)), 16, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("loadclient: malformed chunk size %q", line)
		}
		if n == 0 {
			for { // trailers, then the blank line
				if line, err = c.line(); err != nil || len(line) == 0 {
					return err
				}
			}
		}
		if _, err := io.CopyN(&c.out, c.br, n); err != nil {
			return err
		}
		if line, err = c.line(); err != nil || len(line) != 0 {
			return cmp.Or(err, fmt.Errorf("loadclient: a chunk overran its size"))
		}
	}
}

// line reads one CRLF-terminated line, without its end; it is valid until
// the next read.
func (c *Conn) line() ([]byte, error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, errors.New("loadclient: a header line longer than 16 KiB")
		}
		return nil, err
	}
	return bytes.TrimSuffix(line[:len(line)-1], []byte("\r")), nil
}

// Close closes the connection; the next Post dials a new one.
func (c *Conn) Close() {
	if c.conn != nil {
		_ = c.conn.Close()
		c.conn, c.br = nil, nil
	}
}
