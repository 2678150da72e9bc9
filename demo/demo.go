// Package demo seeds the small demo fleet the embedded development database
// starts with, through the same stores (and so the same rules) as the API.
package demo

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
)

// The demo users, both in the default tenant.
var (
	Alice = uuid.MustParse("a11ce000-0000-4000-8000-000000000001")
	Bob   = uuid.MustParse("b0b00000-0000-4000-8000-000000000002")
)

// Tenant is the demo tenant: the default one, so tokens minted without a
// tenant land in it.
var Tenant = auth.DefaultTenant

// As returns ctx acting as the given demo user.
func As(ctx context.Context, user uuid.UUID) context.Context {
	return auth.WithPrincipal(ctx, &auth.Principal{UserID: user, TenantID: Tenant, Role: auth.RoleUser})
}

// Seed creates the demo fleet in one transaction: Alice has a running press
// with an active deployment, a stopped press with a pending one and a sorter
// in ERROR; Bob has one machine of his own.
func Seed(ctx context.Context, bdb *bun.DB) error {
	machines := db.NewMachines()
	err := bdb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		alice := As(ctx, Alice)
		press1, err := machines.Create(alice, tx, db.CreateMachineInput{Name: "press-01", Configuration: map[string]any{"site": "Lyon", "line": 1}})
		if err != nil {
			return err
		}
		if _, err := machines.Start(alice, tx, press1.ID); err != nil {
			return err
		}
		if _, err := machines.Deploy(alice, tx, press1.ID, db.ProtocolInput{Name: "stamping", Version: "1.2.0", Settings: map[string]any{"force_kn": 120}}); err != nil {
			return err
		}
		if _, err := machines.LogEvent(alice, tx, press1.ID, "telemetry", map[string]any{"temperature_c": 41.5}); err != nil {
			return err
		}
		press2, err := machines.Create(alice, tx, db.CreateMachineInput{Name: "press-02", Configuration: map[string]any{"site": "Lyon", "line": 2}})
		if err != nil {
			return err
		}
		if _, err := machines.Deploy(alice, tx, press2.ID, db.ProtocolInput{Name: "stamping", Version: "1.3.0-rc.1"}); err != nil {
			return err
		}
		sorter, err := machines.Create(alice, tx, db.CreateMachineInput{Name: "sorter-01", Configuration: map[string]any{"site": "Porto"}})
		if err != nil {
			return err
		}
		if _, err := machines.Start(alice, tx, sorter.ID); err != nil {
			return err
		}
		if _, err := machines.LogEvent(alice, tx, sorter.ID, "error", map[string]any{"message": "belt jammed"}); err != nil {
			return err
		}
		_, err = machines.Create(As(ctx, Bob), tx, db.CreateMachineInput{Name: "bob-lab-1"})
		return err
	})
	if err != nil {
		return fmt.Errorf("seeding the demo fleet: %w", err)
	}
	return nil
}
