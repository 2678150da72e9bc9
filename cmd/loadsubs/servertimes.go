package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// serverTimes is the server's own timing of the requests (the drive's
// mutations) between two scrapes of its request-duration histogram.
type serverTimes struct {
	N                             int64
	Within25, Within50, Within100 float64
	// P99Bound is the smallest bucket bound that 99% of the requests are
	// within ("+Inf" when none is).
	P99Bound string
}

// postBuckets reads the cumulative counts of the server's
// fleetgraph_http_request_duration_seconds histogram for POST, by upper
// bound ("le").
func postBuckets(ctx context.Context, url string) (map[string]int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s", url, resp.Status)
	}
	out := map[string]int64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "fleetgraph_http_request_duration_seconds_bucket{") || !strings.Contains(line, `method="POST"`) {
			continue
		}
		i := strings.Index(line, `le="`)
		j := strings.LastIndexByte(line, ' ')
		if i < 0 || j < 0 {
			continue
		}
		le := line[i+4:]
		le = le[:strings.IndexByte(le, '"')]
		n, err := strconv.ParseFloat(line[j+1:], 64)
		if err != nil {
			continue
		}
		out[le] = int64(n)
	}
	return out, sc.Err()
}

// timesBetween is the requests observed between two scrapes.
func timesBetween(before, after map[string]int64) *serverTimes {
	n := after["+Inf"] - before["+Inf"]
	if n <= 0 {
		return nil
	}
	within := func(le string) float64 { return float64(after[le]-before[le]) / float64(n) }
	t := &serverTimes{N: n, Within25: within("0.025"), Within50: within("0.05"), Within100: within("0.1"), P99Bound: "+Inf"}
	best := -1.0
	for le := range after {
		bound, err := strconv.ParseFloat(le, 64)
		if err != nil || le == "+Inf" || within(le) < 0.99 {
			continue
		}
		if best < 0 || bound < best {
			best = bound
			t.P99Bound = fmt.Sprintf("%g ms", bound*1000)
		}
	}
	return t
}
