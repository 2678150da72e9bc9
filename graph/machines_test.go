package graph_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

const machineFields = `id name status configuration version lastStartedAt lastStoppedAt createdAt updatedAt`

type machine struct {
	ID            string         `json:"id"`
	Name          string         `json:"name"`
	Status        string         `json:"status"`
	Configuration map[string]any `json:"configuration"`
	Version       int            `json:"version"`
	LastStartedAt *string        `json:"lastStartedAt"`
	LastStoppedAt *string        `json:"lastStoppedAt"`
}

func createMachine(t *testing.T, s *apitest.Server, token, name string) machine {
	t.Helper()
	var out struct{ CreateMachine machine }
	s.Do(t, token, `mutation($n: String!) { createMachine(input: {name: $n, configuration: {cpu: 2}}) { `+machineFields+` } }`,
		map[string]any{"n": name}).OK(t, &out)
	return out.CreateMachine
}

func TestMachineLifecycle(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	alice := s.NewUser(t, [16]byte{})

	m := createMachine(t, s, alice.Token, "press-01")
	require.Equal(t, "STOPPED", m.Status)
	require.Equal(t, map[string]any{"cpu": float64(2)}, m.Configuration)

	var started struct{ StartMachine machine }
	s.Do(t, alice.Token, `mutation($id: ID!) { startMachine(id: $id) { `+machineFields+` } }`, map[string]any{"id": m.ID}).OK(t, &started)
	require.Equal(t, "RUNNING", started.StartMachine.Status)
	require.NotNil(t, started.StartMachine.LastStartedAt)
}
