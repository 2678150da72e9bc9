package graph_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/apitest"
	"fleetgraph/auth"
)

// The batch claim's planner setting. The other batch claim tests are in
// graph/jobtests; this one stays here because it builds its tenant with the
// subscription tests' lvNewTenant.

// TestBatchClaimRunsWithoutJIT: a batch claim turns JIT compilation off
// for its own transaction only (on a long queue the planner costs a batch
// above jit_above_cost, and compiling it took longer than the claim:
// BenchmarkClaimBatchOnALongQueue), and a single claim leaves it alone.
func TestBatchClaimRunsWithoutJIT(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := lvNewTenant(t, s)
	r := tn.robot("r1", 5)
	for range 3 {
		tn.enqueue(tn.wf, nil)
	}
	var tenant uuid.UUID
	require.NoError(t, s.DB.NewRaw("SELECT tenant_id FROM robots WHERE id = ?", r.ID).Scan(t.Context(), &tenant))
	asRobot := auth.WithPrincipal(t.Context(), &auth.Principal{RobotID: uuid.MustParse(r.ID), TenantID: tenant, Role: auth.RoleRobot})
	jitIn := func(claim func(ctx context.Context, tx bun.Tx) error) string {
		var jit string
		require.NoError(t, s.DB.RunInTx(t.Context(), nil, func(ctx context.Context, tx bun.Tx) error {
			if err := claim(asRobot, tx); err != nil {
				return err
			}
			return tx.NewRaw("SELECT current_setting('jit')").Scan(ctx, &jit)
		}))
		return jit
	}
	var def string
	require.NoError(t, s.DB.NewRaw("SELECT current_setting('jit')").Scan(t.Context(), &def))
	require.Equal(t, def, jitIn(func(ctx context.Context, tx bun.Tx) error {
		_, err := s.App.Resolver.JobStore.Claim(ctx, tx)
		return err
	}), "a single claim leaves the setting alone")
	require.Equal(t, "off", jitIn(func(ctx context.Context, tx bun.Tx) error {
		leases, err := s.App.Resolver.JobStore.ClaimMany(ctx, tx, 2)
		require.Len(t, leases, 2)
		return err
	}))
	var after string
	require.NoError(t, s.DB.NewRaw("SELECT current_setting('jit')").Scan(t.Context(), &after))
	require.Equal(t, def, after, "only the claim's transaction ran without JIT")
}
