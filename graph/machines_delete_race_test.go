package graph_test

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// A machine deleted while a client logs an event for it: the event is
// stored before the deletion (which then takes it along) or refused
// NOT_FOUND, never INTERNAL. The event's read of the machine once took no
// lock (but for `error` events), so the machine could go between the read
// and the insert, which then failed on the foreign key. A lock on
// machine_events holds whichever of the two reaches it first: the event's
// insert (it then holds the machine, and the deletion waits for it), or
// the deletion's cascade (the event's read then waits for the deletion,
// and finds no machine).
func TestLoggingAnEventWhileTheMachineIsDeleted(t *testing.T) {
	t.Parallel()
	const logEvent = `mutation($id: ID!, $type: String!) { logMachineEvent(machineId: $id, eventType: $type, details: {a: 1}) { id } }`
	const deleteMachine = `mutation($id: ID!) { deleteMachine(id: $id) }`
	for _, c := range []struct {
		name, eventType string
		deletionFirst   bool
	}{
		{"telemetry, event first", "telemetry", false},
		{"telemetry, deletion first", "telemetry", true},
		{"error, event first", "error", false},
		{"error, deletion first", "error", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s := apitest.New(t)
			u := s.NewUser(t, uuid.Nil)
			var m struct{ CreateMachine struct{ ID string } }
			s.Do(t, u.Token, `mutation { createMachine(input: {name: "doomed"}) { id } }`, nil).OK(t, &m)
			id := m.CreateMachine.ID

			release := s.LockTable(t, "machine_events")
			async := func(q string, vars map[string]any) <-chan *apitest.Response {
				ch := make(chan *apitest.Response, 1)
				go func() { ch <- s.Do(t, u.Token, q, vars) }()
				return ch
			}
			waiting := func(n int) {
				apitest.Eventually(t, 30*time.Second, "statements about the machine wait for locks", func() bool {
					return s.LockWaiters(t, "%machine%") >= n
				})
			}
			var logged, deleted <-chan *apitest.Response
			if c.deletionFirst {
				deleted = async(deleteMachine, map[string]any{"id": id})
				waiting(1)
				logged = async(logEvent, map[string]any{"id": id, "type": c.eventType})
			} else {
				logged = async(logEvent, map[string]any{"id": id, "type": c.eventType})
				waiting(1)
				deleted = async(deleteMachine, map[string]any{"id": id})
			}
			waiting(2)
			release()

			d, l := <-deleted, <-logged
			d.OK(t, nil)
			if c.deletionFirst {
				l.Code(t, "NOT_FOUND")
			} else {
				require.Empty(t, l.Errors, "the event: %s\nserver log:\n%s", l.Raw, s.Log.String())
			}
			var left int
			require.NoError(t, s.DB.NewRaw(`SELECT count(*) FROM machine_events WHERE machine_id = ?`, id).Scan(t.Context(), &left))
			require.Zero(t, left, "events of the deleted machine")
		})
	}
}
