package graph_test

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// A revoked key used while its robot is deleted is refused 401
// UNAUTHENTICATED, as any revoked key: its refusal's audit entry, written
// after the robot's deletion took the key along, once named the key
// regardless and failed on its foreign key (500 INTERNAL). A lock on
// api_key_audit holds the refusal's audit after the key was read, and the
// deletion's ON DELETE SET NULL of the key's entries behind it.
func TestARevokedKeyUsedWhileItsRobotIsDeleted(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)
	robot, key := s.RobotWithKey(t, u.Token, "doomed")
	var keys struct{ APIKeys []struct{ ID string } }
	s.Do(t, u.Token, `query($r: ID!) { apiKeys(robotId: $r) { id } }`, map[string]any{"r": robot}).OK(t, &keys)
	s.Do(t, u.Token, `mutation($k: ID!) { revokeApiKey(id: $k) { id } }`, map[string]any{"k": keys.APIKeys[0].ID}).OK(t, nil)

	release := s.LockTable(t, "api_key_audit")
	used := make(chan *apitest.Response, 1)
	go func() { used <- s.Do(t, key, `{ currentRobot { id } }`, nil) }()
	apitest.Eventually(t, 30*time.Second, "the refusal's audit waits", func() bool {
		return s.LockWaiters(t, "%INSERT INTO%api_key_audit%") == 1
	})
	deleted := make(chan *apitest.Response, 1)
	go func() {
		deleted <- s.Do(t, u.Token, `mutation($id: ID!) { deleteRobot(id: $id) }`, map[string]any{"id": robot})
	}()
	apitest.Eventually(t, 30*time.Second, "the robot's deletion waits", func() bool {
		return s.LockWaiters(t, "%DELETE%robots%") == 1
	})
	release()

	(<-deleted).OK(t, nil)
	r := <-used
	require.Equal(t, 401, r.Status, "%s\nserver log:\n%s", r.Raw, s.Log.String())
	r.Code(t, "UNAUTHENTICATED")
	require.Contains(t, r.Errors[0].Message, "revoked")

	var audit []struct {
		APIKeyID *string `bun:"api_key_id"`
		RobotID  string  `bun:"robot_id"`
	}
	require.NoError(t, s.DB.NewRaw(`SELECT api_key_id::text, robot_id::text FROM api_key_audit WHERE event = 'USED_AFTER_REVOKE'`).
		Scan(t.Context(), &audit))
	require.Len(t, audit, 1, "the refusal is audited")
	require.Nil(t, audit[0].APIKeyID, "the deleted key")
	require.Equal(t, robot, audit[0].RobotID, "the robot the key was of")
}
