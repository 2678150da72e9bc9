package loadclient_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"fleetgraph/bench/loadclient"
)

// echo answers a POST with its method, path, headers of interest and body;
// /big answers in chunks, /close asks to end the connection.
func echo(conns *atomic.Int64) *httptest.Server {
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/big":
			for range 100 {
				_, _ = w.Write([]byte(strings.Repeat("x", 1000)))
				w.(http.Flusher).Flush() // chunked
			}
			return
		case "/close":
			w.Header().Set("Connection", "close")
		case "/slow":
			<-r.Context().Done()
			return
		case "/teapot":
			w.WriteHeader(http.StatusTeapot)
		}
		_, _ = io.WriteString(w, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("Authorization")+" "+string(body))
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	s.Start()
	return s
}

// serve starts echo for the test and returns its URL and its count of
// connections.
func serve(t *testing.T) (string, *atomic.Int64) {
	conns := new(atomic.Int64)
	s := echo(conns)
	t.Cleanup(s.Close)
	return s.URL, conns
}

// connect returns a Conn to url, closed when the test ends.
func connect(t *testing.T, url string) *loadclient.Conn {
	c, err := loadclient.New(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestPostKeepsOneConnection(t *testing.T) {
	url, conns := serve(t)
	c := connect(t, url+"/graphql?x=1")
	for i := range 3 {
		body := strings.Repeat("b", i*5000)
		status, out, err := c.Post(t.Context(), "Authorization: Bearer k\r\n", []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if want := "POST /graphql?x=1 Bearer k " + body; status != 200 || string(out) != want {
			t.Fatalf("got %d %.80q, want 200 %.80q", status, out, want)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for three requests, want 1", n)
	}
}

func TestPostReadsChunkedBodiesAndStatuses(t *testing.T) {
	url, _ := serve(t)
	status, out, err := connect(t, url+"/big").Post(t.Context(), "", nil)
	if err != nil || status != 200 || len(out) != 100_000 {
		t.Fatalf("chunked: %d, %d bytes, %v", status, len(out), err)
	}
	if status, _, err := connect(t, url+"/teapot").Post(t.Context(), "", []byte("{}")); err != nil || status != http.StatusTeapot {
		t.Fatalf("status %d, %v; want 418", status, err)
	}
}

func TestPostDialsAgainAfterTheServerCloses(t *testing.T) {
	url, conns := serve(t)
	c := connect(t, url+"/close")
	for range 2 {
		if status, _, err := c.Post(t.Context(), "", []byte("x")); err != nil || status != 200 {
			t.Fatalf("%d, %v", status, err)
		}
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2 (the server closed the first)", n)
	}
}

func TestPostEndsWithItsContextOrTimeout(t *testing.T) {
	url, _ := serve(t)
	c := connect(t, url+"/slow")
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, _, err := c.Post(ctx, "", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v, want context.Canceled", err)
	}
	c.Timeout = 50 * time.Millisecond
	if _, _, err := c.Post(t.Context(), "", nil); err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("timed out: %v, want a timeout", err)
	}
}

func TestNewRefusesWhatItCannotPostTo(t *testing.T) {
	for _, u := range []string{"https://example.com/", "localhost:80", "http://", "::"} {
		if _, err := loadclient.New(u); err == nil {
			t.Errorf("New(%q) = nil error", u)
		}
	}
}

// TestPostRefusesMalformedResponses answers from a raw socket with what no
// HTTP/1.1 server should send: each is an error, never a hang or a panic.
func TestPostRefusesMalformedResponses(t *testing.T) {
	for name, answer := range map[string]string{
		"status line":      "HTTP/1.1 2x0 OK\r\n\r\n",
		"not http":         "SSH-2.0-OpenSSH\r\n\r\n",
		"header":           "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
		"length":           "HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\n",
		"no length":        "HTTP/1.1 200 OK\r\n\r\nbody",
		"chunk size":       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"chunk overrun":    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
		"short body":       "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
		"long header line": "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", 20_000) + "\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				defer conn.Close()
				_, _ = conn.Read(make([]byte, 4096))
				_, _ = io.WriteString(conn, answer)
			}()
			c := connect(t, "http://"+l.Addr().String()+"/")
			c.Timeout = 5 * time.Second
			if status, out, err := c.Post(t.Context(), "", []byte("{}")); err == nil {
				t.Fatalf("got %d %q, want an error", status, out)
			}
		})
	}
}
