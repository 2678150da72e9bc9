package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// This file is -floor: what one write per subscriber per change costs on
// this machine with no server at all. A child process (this binary again,
// with -floor-writer) accepts the subscribers' connections on loopback and,
// -rate times a second, writes one websocket frame the size of a
// jobUpdated message to every one of them from one goroutine per CPU, as
// the fan-out's writers do; this process reads and counts the frames as
// -lean's raw subscribers do. The child reports its own CPU time per write
// and how long each round took to reach the last subscriber: the floor
// under the server's CPU per delivery and under the latency of a change
// that every subscriber receives (run E), for a server that makes one
// write per subscriber.

// floorResult is what the writer reports.
type floorResult struct {
	Subscribers int `json:"subscribers"`
	FrameBytes  int `json:"frame_bytes"`
	Writers     int `json:"writers"`
	Rounds      int `json:"rounds"`
	Writes      int `json:"writes"`
	// CPUPerWrite is the writer's CPU time (user and system) per write.
	CPUPerWriteMicros float64 `json:"cpu_per_write_us"`
	// SystemShare is the share of that time spent in the kernel.
	SystemShare float64 `json:"system_share"`
	// Round* are the times from a round's start to its last write.
	RoundP50Millis float64 `json:"round_p50_ms"`
	RoundMaxMillis float64 `json:"round_max_ms"`
	// Received is the frames this process read (every one written, or the run failed).
	Received int64 `json:"received"`
}

// floorFrame is an unmasked text frame of n bytes (header included) that
// looks like a jobUpdated delivery.
func floorFrame(n int) []byte {
	body := `{"id":"1","type":"next","payload":{"data":{"jobUpdated":{"op":"UPDATE","id":"4b7e2c1a-9f0d-4c3e-8a5b-2d6f1e0c9b8a","revision":1,"job":{"status":"RUNNING","progress":50,"pad":""}}}}}`
	// n is at least 200 (runFloor), so the length takes two more bytes.
	body = strings.Replace(body, `"pad":""`, `"pad":"`+strings.Repeat("x", max(n-4-len(body), 0))+`"`, 1)
	f := []byte{0x81, 126, byte(len(body) >> 8), byte(len(body))}
	return append(f, body...)
}

// runFloor is -floor: it starts the writer, connects the subscribers, and
// prints the writer's report.
func runFloor(ctx context.Context, o options, frameBytes int, stdout io.Writer) error {
	if frameBytes < 200 || frameBytes > 60000 {
		return errors.New("-floor-frame is 200 to 60000 bytes")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, self, "-floor-writer", "-subscribers", fmt.Sprint(o.subscribers),
		"-rate", fmt.Sprint(o.rate), "-duration", o.duration.String(), "-floor-frame", fmt.Sprint(frameBytes))
	// The writer runs Go code on as many threads as a server would
	// (GOMAXPROCS unset: one per CPU), not on this tool's.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GOMAXPROCS=") })
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := bufio.NewScanner(out)
	if !lines.Scan() {
		return errors.New("the writer did not say where it listens")
	}
	addr := lines.Text()

	// received counts the frames read. Once the writer's report gives the
	// number written (want), whichever of a reader and the report sees the
	// count reach it closes all.
	var received, want atomic.Int64
	all := make(chan struct{})
	var allOnce sync.Once
	reached := func(n int64) {
		if w := want.Load(); w > 0 && n >= w {
			allOnce.Do(func() { close(all) })
		}
	}
	frameLen := len(floorFrame(frameBytes))
	dial := make(chan struct{}, o.dialers)
	var wg sync.WaitGroup
	var dialErr atomic.Pointer[error]
	for range o.subscribers {
		dial <- struct{}{}
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", addr)
		<-dial
		if err != nil {
			dialErr.CompareAndSwap(nil, &err)
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer nc.Close()
			buf := make([]byte, rawBuffer)
			var partial int
			for {
				n, err := nc.Read(buf)
				partial += n
				if frames := partial / frameLen; frames > 0 {
					reached(received.Add(int64(frames)))
				}
				partial %= frameLen
				if err != nil {
					return
				}
			}
		}()
	}
	if e := dialErr.Load(); e != nil {
		return fmt.Errorf("connecting subscriber: %w", *e)
	}
	if !lines.Scan() {
		return errors.New("the writer ended without a report")
	}
	var res floorResult
	if err := json.Unmarshal(lines.Bytes(), &res); err != nil {
		return fmt.Errorf("the writer's report: %w", err)
	}
	// Every frame written is read before the writer closes its side.
	want.Store(int64(res.Writes))
	reached(received.Load())
	select {
	case <-all:
	case <-time.After(30 * time.Second):
	case <-ctx.Done():
	}
	res.Received = received.Load()
	if res.Received != int64(res.Writes) {
		return fmt.Errorf("%d frames written, %d read", res.Writes, res.Received)
	}
	if o.jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	fmt.Fprintf(stdout, "write floor: %d subscribers, %d-byte frames, %d writers, %d rounds, %d writes (all read)\n",
		res.Subscribers, res.FrameBytes, res.Writers, res.Rounds, res.Writes)
	fmt.Fprintf(stdout, "  writer CPU per write   %.1f µs (%.0f%% in the kernel)\n", res.CPUPerWriteMicros, 100*res.SystemShare)
	fmt.Fprintf(stdout, "  round to last write    p50 %.1f ms, max %.1f ms\n", res.RoundP50Millis, res.RoundMaxMillis)
	return nil
}

// floorWriter is -floor-writer, the child: it listens, accepts n
// connections, writes the rounds and prints its report.
func floorWriter(ctx context.Context, o options, frameBytes int, stdout io.Writer) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Fprintln(stdout, ln.Addr().String())
	conns := make([]net.Conn, 0, o.subscribers)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for len(conns) < o.subscribers {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	frame := floorFrame(frameBytes)
	writers := runtime.GOMAXPROCS(0)
	interval := time.Duration(float64(time.Second) / max(o.rate, 0.01))
	var rounds []time.Duration
	before := rusage()
	end := time.Now().Add(o.duration)
	for next := time.Now(); next.Before(end) && ctx.Err() == nil; next = next.Add(interval) {
		if d := time.Until(next); d > 0 {
			time.Sleep(d) // pacing the rounds, not waiting for an event
		}
		start := time.Now()
		var wg sync.WaitGroup
		var failed atomic.Pointer[error]
		for w := range writers {
			part := conns[w*len(conns)/writers : (w+1)*len(conns)/writers]
			wg.Go(func() {
				for _, c := range part {
					if _, err := c.Write(frame); err != nil {
						failed.CompareAndSwap(nil, &err)
						return
					}
				}
			})
		}
		wg.Wait()
		if e := failed.Load(); e != nil {
			return fmt.Errorf("writing: %w", *e)
		}
		rounds = append(rounds, time.Since(start))
	}
	after := rusage()
	if len(rounds) == 0 {
		return errors.New("no round ran")
	}
	writes := len(rounds) * len(conns)
	user, sys := after.user-before.user, after.sys-before.sys
	slices.Sort(rounds)
	res := floorResult{
		Subscribers: len(conns), FrameBytes: len(frame), Writers: writers, Rounds: len(rounds), Writes: writes,
		CPUPerWriteMicros: (user + sys).Seconds() * 1e6 / float64(writes),
		SystemShare:       sys.Seconds() / max((user+sys).Seconds(), 1e-9),
		RoundP50Millis:    rounds[len(rounds)/2].Seconds() * 1e3,
		RoundMaxMillis:    rounds[len(rounds)-1].Seconds() * 1e3,
	}
	if err := json.NewEncoder(stdout).Encode(res); err != nil {
		return err
	}
	// Stay until the reader has read everything and stops this process.
	<-ctx.Done()
	return nil
}

type cpuTimes struct{ user, sys time.Duration }

// rusage is this process's CPU time so far.
func rusage() cpuTimes {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return cpuTimes{time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())}
}
