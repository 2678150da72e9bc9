package graph_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/db"
)

// logMachineEvent's details take a string too, as the API Fleetgraph
// replaces did: stored and returned (detailsText) exactly as given, while
// details stays an object for every reader.
func TestEventDetailsAsText(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	c := newClient(t, s)
	m := c.create("details-text")

	type event struct {
		ID          string
		Details     map[string]any
		DetailsText *string
	}
	const logVar = `mutation($id: ID!, $d: JSON) { logMachineEvent(machineId: $id, eventType: "note", details: $d) { id details detailsText } }`
	logged := func(t *testing.T, query string, vars map[string]any) event {
		t.Helper()
		var out struct{ LogMachineEvent event }
		c.do(query, vars, &out)
		return out.LogMachineEvent
	}
	stored := func(t *testing.T, id string) event {
		t.Helper()
		var out struct {
			Machine struct {
				Events struct{ Edges []struct{ Node event } }
			}
		}
		c.do(`query($id: ID!) { machine(id: $id) { events(first: 100) { edges { node { id details detailsText } } } } }`, map[string]any{"id": m.ID}, &out)
		for _, e := range out.Machine.Events.Edges {
			if e.Node.ID == id {
				return e.Node
			}
		}
		t.Fatalf("event %s is not in the machine's log", id)
		return event{}
	}
	count := func(t *testing.T) int {
		t.Helper()
		var out struct {
			Machine struct{ Events struct{ TotalCount int } }
		}
		c.do(`query($id: ID!) { machine(id: $id) { events { totalCount } } }`, map[string]any{"id": m.ID}, &out)
		return out.Machine.Events.TotalCount
	}

	for name, text := range map[string]string{
		"Plain":   "disk full",
		"Empty":   "",
		"Unicode": "température élevée 🔥, \"quoted\", back\\slash, <tag> & {not: json}",
		"JSONish": `{"looks": "like json"}`,
		"Long":    strings.Repeat("x", db.MaxJSONBytes),
	} {
		t.Run("Variable"+name, func(t *testing.T) {
			ev := logged(t, logVar, map[string]any{"id": m.ID, "d": text})
			require.NotNil(t, ev.DetailsText)
			require.Equal(t, text, *ev.DetailsText)
			require.Equal(t, map[string]any{"text": text}, ev.Details)
			again := stored(t, ev.ID)
			require.Equal(t, text, *again.DetailsText)
			require.Equal(t, map[string]any{"text": text}, again.Details)
		})
	}

	t.Run("InlineLiteral", func(t *testing.T) {
		ev := logged(t, `mutation($id: ID!) { logMachineEvent(machineId: $id, eventType: "note", details: "belt jammed") { id details detailsText } }`, map[string]any{"id": m.ID})
		require.Equal(t, "belt jammed", *ev.DetailsText)
		require.Equal(t, "belt jammed", *stored(t, ev.ID).DetailsText)
	})

	t.Run("ObjectStillWorks", func(t *testing.T) {
		ev := logged(t, logVar, map[string]any{"id": m.ID, "d": map[string]any{"temperature": 41.5, "text": "an object's own text key"}})
		require.Nil(t, ev.DetailsText)
		require.Equal(t, map[string]any{"temperature": 41.5, "text": "an object's own text key"}, ev.Details)
		require.Nil(t, stored(t, ev.ID).DetailsText)
	})

	t.Run("NumbersKeepEveryDigit", func(t *testing.T) {
		// Details leave as PostgreSQL stores them: a number past float64's
		// range or precision is no INTERNAL, and comes back digit for digit.
		const big = "12345678901234567890123"
		resp := s.Do(t, c.token, logVar, map[string]any{"id": m.ID, "d": map[string]any{"big": json.Number(big), "huge": json.Number("1e309")}})
		resp.OK(t, nil)
		require.Contains(t, string(resp.Raw), big)
		require.Contains(t, string(resp.Raw), "1"+strings.Repeat("0", 309))
		read := s.Do(t, c.token, `query($id: ID!) { machineEvents(machineId: $id, first: 1) { edges { node { details } } } }`, map[string]any{"id": m.ID})
		read.OK(t, nil)
		require.Contains(t, string(read.Raw), big)
	})

	t.Run("NoDetails", func(t *testing.T) {
		ev := logged(t, `mutation($id: ID!) { logMachineEvent(machineId: $id, eventType: "note") { id details detailsText } }`, map[string]any{"id": m.ID})
		require.Nil(t, ev.DetailsText)
		require.Equal(t, map[string]any{}, ev.Details)
	})

	t.Run("Refused", func(t *testing.T) {
		before := count(t)
		for name, vars := range map[string]map[string]any{
			"Oversized": {"id": m.ID, "d": strings.Repeat("x", db.MaxJSONBytes+1)},
			"NUL":       {"id": m.ID, "d": "before\x00after"},
			"Number":    {"id": m.ID, "d": 42},
			"Array":     {"id": m.ID, "d": []any{"disk full"}},
			"Boolean":   {"id": m.ID, "d": true},
		} {
			r := s.Do(t, c.token, logVar, vars)
			require.NotContains(t, string(r.Data), "logMachineEvent\":{", name)
			e := r.Code(t, "BAD_USER_INPUT")
			require.NotContains(t, e.Message, "pq:", name)
		}
		require.Equal(t, before, count(t), "nothing was written")
	})

	// Subscribers get the text as given too (the live path re-reads the row).
	t.Run("Subscription", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		mp := openMultipart(t, streamRequest(t, ctx, s, c.token, apolloAccept,
			`subscription($m: ID!) { machineEventAdded(machineId: $m) { eventType details detailsText } }`, map[string]any{"m": m.ID}))
		payloads := make(chan map[string]any, 100)
		go func() {
			for {
				v, err := mp.next(false)
				if err != nil {
					return
				}
				payloads <- v
			}
		}()
		// The stream is live once its headers are out, but the earlier
		// subtests' events may still be on their way through the hub and
		// reach it first: wait for this one.
		for {
			logged(t, logVar, map[string]any{"id": m.ID, "d": "live text"})
			select {
			case v := <-payloads:
				raw, _ := json.Marshal(v["payload"])
				if !strings.Contains(string(raw), "live text") {
					continue // an earlier subtest's event
				}
				require.JSONEq(t, `{"data":{"machineEventAdded":{"eventType":"note","details":{"text":"live text"},"detailsText":"live text"}}}`, string(raw))
				return
			case <-ctx.Done():
				t.Fatal("no event reached the subscriber")
			case <-time.After(time.Second):
			}
		}
	})

	// Only this argument takes text: every other JSON argument still
	// refuses a string.
	t.Run("OtherJSONArgumentsRefuseStrings", func(t *testing.T) {
		r := s.Do(t, c.token, `mutation($c: JSON) { createMachine(input: {name: "x", configuration: $c}) { id } }`, map[string]any{"c": "disk full"})
		require.Contains(t, r.Code(t, "BAD_USER_INPUT").Message, "JSON object")
		r = s.Do(t, c.token, `mutation($id: ID!) { deployProtocol(machineId: $id, protocol: {name: "p", version: "1.0.0", settings: "x"}) { id } }`, map[string]any{"id": m.ID})
		r.Code(t, "BAD_USER_INPUT")
	})
}
