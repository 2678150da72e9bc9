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
// in ERROR; Bob has one machine of his own. The tenant has two robots, an
// invoice workflow assigned to both (one of its nodes routed to robots with
// the "ocr" capability), and a few queued jobs. It returns the raw API key of
// robot-lyon-1, which is stored nowhere else.
func Seed(ctx context.Context, bdb *bun.DB) (robotKey string, err error) {
	machines := db.NewMachines()
	err = bdb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
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
		if _, err := machines.LogEvent(alice, tx, press1.ID, "telemetry", db.EventDetails{Object: map[string]any{"temperature_c": 41.5}}); err != nil {
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
		if _, err := machines.LogEvent(alice, tx, sorter.ID, "error", db.EventDetails{Object: map[string]any{"message": "belt jammed"}}); err != nil {
			return err
		}
		if _, err = machines.Create(As(ctx, Bob), tx, db.CreateMachineInput{Name: "bob-lab-1"}); err != nil {
			return err
		}
		robotKey, err = seedRobots(alice, tx)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("seeding the demo fleet: %w", err)
	}
	return robotKey, nil
}

func seedRobots(ctx context.Context, tx bun.Tx) (string, error) {
	robots := db.NewRobots(db.DefaultQueueConfig)
	workflows := db.NewWorkflows()
	jobs := db.NewJobs(db.DefaultQueueConfig, workflows)
	slots := 2
	lyon, err := robots.Create(ctx, tx, db.CreateRobotInput{Name: "robot-lyon-1", Capabilities: []string{"excel", "browser", "ocr"}, MaxConcurrentJobs: &slots})
	if err != nil {
		return "", err
	}
	porto, err := robots.Create(ctx, tx, db.CreateRobotInput{Name: "robot-porto-1", Capabilities: []string{"excel", "browser"}})
	if err != nil {
		return "", err
	}
	key, err := db.NewAPIKeys().Create(ctx, tx, lyon.ID, "demo", nil)
	if err != nil {
		return "", err
	}
	wf, err := workflows.Create(ctx, tx, db.CreateWorkflowInput{Name: "invoice-processing", Definition: map[string]any{
		"nodes": []any{
			map[string]any{"id": "fetch", "type": "browser.download"},
			map[string]any{"id": "read", "type": "ocr.extract"},
			map[string]any{"id": "book", "type": "excel.append"},
		},
		"edges": []any{[]any{"fetch", "read"}, []any{"read", "book"}},
	}})
	if err != nil {
		return "", err
	}
	if _, err := workflows.Assign(ctx, tx, wf.ID, lyon.ID, true, 10); err != nil {
		return "", err
	}
	if _, err := workflows.Assign(ctx, tx, wf.ID, porto.ID, false, 0); err != nil {
		return "", err
	}
	ocr := "ocr"
	if _, err := workflows.SetOverride(ctx, tx, wf.ID, "read", nil, &ocr); err != nil {
		return "", err
	}
	var batch []db.EnqueueJobInput
	for i := 1; i <= 5; i++ {
		priority := i % 3
		batch = append(batch, db.EnqueueJobInput{WorkflowID: wf.ID, Priority: &priority, Input: map[string]any{"invoice": fmt.Sprintf("INV-2026-%04d", i)}})
	}
	if _, err := jobs.EnqueueMany(ctx, tx, batch); err != nil {
		return "", err
	}
	return key.Key, nil
}
