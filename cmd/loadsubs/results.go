package main

import (
	"fmt"
	"io"
	"os"
)

// results is one run's figures.
type results struct {
	Subscribers int     `json:"subscribers"`
	Jobs        int     `json:"jobs"`
	Rate        float64 `json:"rate"`
	Spread      int     `json:"spread"`
	Duration    string  `json:"duration"`
	FileLimit   uint64  `json:"fileLimit"`
	OpenSeconds float64 `json:"openSeconds"`

	Mutations          int     `json:"mutations"`
	MutationsPerSecond float64 `json:"mutationsPerSecond"`
	MutationRTT        summary `json:"mutationRoundTrip"`
	// MutationServer is how long the server took over the drive's
	// requests, from its own histogram (-serve): the round trip without
	// this tool's share of the machine.
	MutationServer *serverTimes `json:"mutationServerTime,omitempty"`
	Errors         int          `json:"errors"`
	ErrorExample   string       `json:"errorExample,omitempty"`
	DriveSeconds   float64      `json:"driveSeconds"`

	// Deliveries counts next messages received by all subscribers; Expected
	// is one per mutation per subscriber it matches. Fewer deliveries than
	// expected means updates were coalesced (a newer revision replaced one
	// not yet sent) or lost.
	Deliveries          int64   `json:"deliveries"`
	Expected            int64   `json:"expected"`
	DeliverySeconds     float64 `json:"deliverySeconds"`
	DeliveriesPerSecond float64 `json:"deliveriesPerSecond"`
	// LatencyLower is receive - mutation response (a lower bound of
	// commit-to-client latency); LatencyUpper is receive - request sent.
	LatencyLower     summary `json:"latencyLowerBound"`
	LatencyUpper     summary `json:"latencyUpperBound"`
	SubscribersEnded int     `json:"subscribersEnded"`
	// Checked subscribers kept every job's last revision; Stale of them
	// ended without some job's final revision.
	Checked      int    `json:"finalStateChecked"`
	Stale        int    `json:"finalStateStale"`
	StaleExample string `json:"finalStateStaleExample,omitempty"`
	EndedExample string `json:"endedExample,omitempty"`

	ServerBefore             memory  `json:"serverBefore"`
	ServerIdle               memory  `json:"serverWithIdleSubscribers"`
	ServerEnd                memory  `json:"serverEnd"`
	ServerBytesPerSubscriber float64 `json:"serverBytesPerSubscriber"`
	ClientPeak               int64   `json:"clientPeakBytes"`

	// CPU is the CPU seconds used from the drive's start to the end of the
	// drain (CPUSeconds of wall time, Cores cores).
	CPU        cpuSample `json:"cpuSeconds"`
	CPUSeconds float64   `json:"cpuWindowSeconds"`
	Cores      int       `json:"cores"`
}

func (r *results) print(w io.Writer) {
	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	p := func(format string, args ...any) { _, _ = fmt.Fprintf(w, format+"\n", args...) }
	p("subscribers           %d (spread over %d workflow(s)), opened in %.1fs, fd limit %d", r.Subscribers, r.Spread, r.OpenSeconds, r.FileLimit)
	p("jobs in flight        %d, target rate %.0f mutations/s, drove %.1fs", r.Jobs, r.Rate, r.DriveSeconds)
	p("mutations             %d (%.1f/s), round trip p50 %.1f ms p99 %.1f ms, errors %d %s",
		r.Mutations, r.MutationsPerSecond, r.MutationRTT.P50, r.MutationRTT.P99, r.Errors, r.ErrorExample)
	if t := r.MutationServer; t != nil {
		p("mutations, server     %d requests: %.0f%% within 25 ms, %.0f%% within 50 ms, %.0f%% within 100 ms; p99 at most %s (its histogram's buckets)",
			t.N, 100*t.Within25, 100*t.Within50, 100*t.Within100, t.P99Bound)
	}
	p("deliveries            %d of %d expected (%.1f%%), %.0f/s over %.1fs",
		r.Deliveries, r.Expected, 100*float64(r.Deliveries)/float64(max(r.Expected, 1)), r.DeliveriesPerSecond, r.DeliverySeconds)
	p("commit-to-client      p50 %.1f-%.1f ms, p90 %.1f-%.1f ms, p99 %.1f-%.1f ms, max %.1f ms (lower-upper bound, n=%d)",
		r.LatencyLower.P50, r.LatencyUpper.P50, r.LatencyLower.P90, r.LatencyUpper.P90, r.LatencyLower.P99, r.LatencyUpper.P99, r.LatencyUpper.Max, r.LatencyLower.N)
	p("subscribers ended     %d %s", r.SubscribersEnded, r.EndedExample)
	p("final state           %d of %d sampled subscribers hold every job's final revision %s", r.Checked-r.Stale, r.Checked, r.StaleExample)
	p("server RSS            %.1f MiB before, %.1f MiB with idle subscribers (%.1f KiB each), %.1f MiB at end, peak %.1f MiB",
		mib(r.ServerBefore.RSS), mib(r.ServerIdle.RSS), r.ServerBytesPerSubscriber/1024, mib(r.ServerEnd.RSS), mib(r.ServerEnd.Peak))
	p("client peak RSS       %.1f MiB", mib(r.ClientPeak))
	capacity := r.CPUSeconds * float64(r.Cores)
	share := func(v float64) float64 { return 100 * v / max(capacity, 1e-9) }
	p("CPU over %.1fs x %d cores: server %.0f%%, its PostgreSQL %.0f%%, this tool %.0f%%, anything else %.0f%%, idle %.0f%%",
		r.CPUSeconds, r.Cores, share(r.CPU.Server), share(r.CPU.Postgres), share(r.CPU.Client),
		share(r.CPU.Machine-r.CPU.Server-r.CPU.Postgres-r.CPU.Client), share(capacity-r.CPU.Machine))
}

func selfPID() int { return os.Getpid() }
