package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
)

// Shutdown ends SSE and multipart subscriptions with their final message
// instead of waiting (20 s) for their clients to leave, as it closes
// websockets with 1001.
func TestServeShutdownEndsStreams(t *testing.T) {
	t.Parallel()
	dsn, _ := emptyDatabase(t)
	e := baseEnv(t).with("DATABASE_URL", dsn, "JWT_SECRET", testSecret)
	p := startServe(t, e, "--listen", "127.0.0.1:0", "--auto-migrate")
	base := p.waitFor(t, p.stderr, servingLog)[1]

	tok, err := verifier(t, testSecret, "").Mint(auth.MintOptions{UserID: uuid.New(), Role: auth.RoleUser, TTL: time.Hour})
	require.NoError(t, err)
	status, resp := postGraphQL(t, base, "Bearer "+tok, `mutation { createMachine(input: {name: "shutdown"}) { id } }`)
	require.Equal(t, http.StatusOK, status)
	require.Empty(t, resp.Errors)
	var created struct{ CreateMachine struct{ ID string } }
	require.NoError(t, json.Unmarshal(resp.Data, &created))

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	open := func(accept string) *http.Response {
		body, _ := json.Marshal(map[string]any{
			"query":     `subscription($id: ID) { machineUpdated(id: $id) { op } }`,
			"variables": map[string]any{"id": created.CreateMachine.ID},
		})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/graphql", bytes.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", accept)
		res, err := http.DefaultClient.Do(req) // no client timeout: the stream lasts
		require.NoError(t, err)
		t.Cleanup(func() { res.Body.Close() })
		require.Equal(t, http.StatusOK, res.StatusCode)
		return res
	}

	sse := bufio.NewScanner(open("text/event-stream").Body)
	nextEvent := func() string {
		for sse.Scan() {
			if ev, ok := strings.CutPrefix(sse.Text(), "event: "); ok {
				return ev
			}
		}
		return "(the stream was cut: " + errString(sse.Err()) + ")"
	}
	require.Equal(t, "next", nextEvent(), "the SSE subscription runs")

	mres := open(`multipart/mixed;subscriptionSpec="1.0", application/json`)
	_, params, err := mime.ParseMediaType(mres.Header.Get("Content-Type"))
	require.NoError(t, err)
	parts := multipart.NewReader(mres.Body, params["boundary"])
	nextPart := func() (string, error) {
		for {
			part, err := parts.NextPart()
			if err != nil {
				return "", err
			}
			b, err := io.ReadAll(part)
			if err != nil {
				return "", err
			}
			if string(b) != "{}" {
				return string(b), nil
			}
		}
	}
	first, err := nextPart()
	require.NoError(t, err)
	require.Contains(t, first, "CURRENT", "the multipart subscription runs")

	p.cancel() // SIGINT
	require.Equal(t, "complete", nextEvent(), "the server ended the SSE stream")
	_, err = nextPart()
	require.ErrorIs(t, err, io.EOF, "the server ended the multipart stream with its closing delimiter")
	require.Equal(t, 0, p.stop(t))
	require.NotContains(t, p.stderr.String(), "did not finish in time")
	require.NotContains(t, p.stderr.String(), "did not close in time")
}

func errString(err error) string {
	if err == nil {
		return "EOF"
	}
	return err.Error()
}
