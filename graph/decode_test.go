package graph_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/graph"
	"fleetgraph/graph/live"
)

// postRaw posts body as an anonymous GraphQL request and returns the
// status and the response.
func postRaw(t *testing.T, s *apitest.Server, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL+"/graphql", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res.StatusCode, out
}

// A body's cost once decoded is bounded before it is decoded: a document
// of more JSON elements than any request needs is refused, over HTTP and
// over a websocket, and large documents decoded at once share a budget,
// so that anonymous bodies of 1 MiB each do not hold gigabytes (40 of them
// held 1.2 GB of heap at once). Not parallel: it measures the process's
// heap, which no other test then grows.
func TestDecodingIsBounded(t *testing.T) {
	s := apitest.New(t)
	many := `{"query":"{ __typename }","variables":{"v":[` + strings.Repeat("0,", live.MaxDocumentElements) + `0]}}`

	t.Run("TooManyElementsOverHTTP", func(t *testing.T) {
		status, body := postRaw(t, s, []byte(many))
		require.Equal(t, http.StatusBadRequest, status, "%.300s", body)
		require.Contains(t, string(body), "TOO_MANY_JSON_ELEMENTS")
		require.Contains(t, string(body), "BAD_USER_INPUT")
	})

	t.Run("TooManyElementsOverAWebsocket", func(t *testing.T) {
		conn := wsDial(t, s, nil, nil)
		conn.SetReadLimit(1 << 20)
		msg := `{"id":"1","type":"subscribe","payload":` + many + `}`
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		require.NoError(t, conn.Write(ctx, websocket.MessageText, []byte(msg)))
		_, _, err := conn.Read(ctx)
		require.Equal(t, websocket.StatusCode(live.CloseBadRequest), websocket.CloseStatus(err), "%v", err)
		require.Contains(t, err.Error(), "JSON elements")
	})

	t.Run("ConcurrentLargeBodies", func(t *testing.T) {
		// About 1 MiB and 115,000 elements: within every limit, and about
		// 25 MB once decoded.
		item := `{"k":"0123456789"},`
		body := []byte(`{"query":"{ __typename }","variables":{"v":[` + strings.Repeat(item, (1<<20-100)/len(item)) + `{}]}}`)
		require.Less(t, live.JSONElements(body), live.MaxDocumentElements)
		runtime.GC()
		var base runtime.MemStats
		runtime.ReadMemStats(&base)
		var peak atomic.Uint64
		stop, sampled := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(sampled)
			var m runtime.MemStats
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				runtime.ReadMemStats(&m)
				if m.HeapInuse > peak.Load() {
					peak.Store(m.HeapInuse)
				}
			}
		}()
		var wg sync.WaitGroup
		var answered, refused atomic.Int32
		for range 40 {
			wg.Go(func() {
				status, out := postRaw(t, s, body)
				switch status {
				case http.StatusOK:
					answered.Add(1)
				case http.StatusTooManyRequests:
					require.Contains(t, string(out), "RATE_LIMITED")
					refused.Add(1)
				default:
					t.Errorf("status %d: %.300s", status, out)
				}
			})
		}
		wg.Wait()
		close(stop)
		<-sampled
		grew := int64(peak.Load()) - int64(base.HeapInuse)
		t.Logf("%d answered, %d refused; the heap in use grew by %d MiB at its peak", answered.Load(), refused.Load(), grew>>20)
		require.NotZero(t, answered.Load())
		require.Less(t, grew, int64(400<<20), "40 MiB of anonymous bodies held %d MiB of heap", grew>>20)
	})
}

// A stream's body takes its share of the decode budget only until the
// stream starts: streams live for hours, and held, 64 padded streams from
// an address (behind a load balancer, everyone's) refused every large
// request. A GET's variables are weighed as a body's are.
func TestDecodingSharesAreGivenBack(t *testing.T) {
	t.Parallel()
	// 4 MiB in all, 1 MiB per address.
	s := apitest.New(t, apitest.Options{Limits: graph.Limits{DecodeBytes: 4 << 20}})
	c := newClient(t, s)
	m := c.create("streamed")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	send := func(method, url string, body []byte, accept string) *http.Response {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+c.token)
		req.Header.Set("Content-Type", "application/json")
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		return res
	}

	body, err := json.Marshal(map[string]any{"query": streamSub, "variables": map[string]any{"id": m.ID}})
	require.NoError(t, err)
	// 900 KB of whitespace: a valid body that weighs most of the share.
	padded := append(append(bytes.TrimSuffix(body, []byte("}")), bytes.Repeat([]byte(" "), 900<<10)...), '}')
	stream := send(http.MethodPost, s.URL+"/graphql", padded, "text/event-stream")
	defer stream.Body.Close()
	require.Equal(t, http.StatusOK, stream.StatusCode)
	lines := bufio.NewScanner(stream.Body)
	for lines.Scan() && !strings.HasPrefix(lines.Text(), "event: next") {
	}
	require.NoError(t, lines.Err())

	// The stream runs; a request as large from the same address passes.
	big, err := json.Marshal(map[string]any{"query": `mutation($n: String!) { createMachine(input: {name: $n}) { id } }`,
		"variables": map[string]any{"n": "big", "pad": strings.Repeat("y", 900<<10)}})
	require.NoError(t, err)
	res := send(http.MethodPost, s.URL+"/graphql", big, "")
	out, _ := io.ReadAll(res.Body)
	res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode, "%.300s", out)

	// A GET whose variables weigh more than the share is refused as a body.
	q := url.Values{"query": {"{ __typename }"}, "variables": {`{"v":[` + strings.Repeat("[],", 20000) + `[]]}`}}
	res = send(http.MethodGet, s.URL+"/graphql?"+q.Encode(), nil, "")
	out, _ = io.ReadAll(res.Body)
	res.Body.Close()
	require.Equal(t, http.StatusTooManyRequests, res.StatusCode, "%.300s", out)
	require.Contains(t, string(out), "LARGE_REQUESTS")
}
