package graph

import (
	"context"

	"github.com/99designs/gqlgen/graphql"
	"github.com/google/uuid"

	"fleetgraph/auth"
	"fleetgraph/dataloaders"
	"fleetgraph/db"
	"fleetgraph/fault"
	"fleetgraph/graph/model"
)

// This file holds the small adapters the resolvers share, kept out of the
// generated resolver files where gqlgen might move them aside.

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// nullIfMissing turns NOT_FOUND into a null result, for fields documented as
// "null when absent or not yours".
func nullIfMissing[T any](v *T, err error) (*T, error) {
	if fault.Has(err, fault.NotFound) {
		return nil, nil
	}
	return v, err
}

func pageSizeOr(first *int, def int) (int, error) {
	if first == nil {
		return def, nil
	}
	return db.PageLimit(first)
}

func viewer(ctx context.Context) (*auth.Principal, error) {
	p := auth.FromContext(ctx)
	if p == nil {
		return nil, fault.New(fault.Unauthenticated, "sign in first: send `Authorization: Bearer <token>`")
	}
	return p, nil
}

// machineEvents serves Query.machineEvents: the machine must be visible (else
// NOT_FOUND), then its page comes through the same loader as Machine.events.
func (r *queryResolver) machineEvents(ctx context.Context, machineID uuid.UUID, first *int, after *string, eventTypes []string) (*model.MachineEventConnection, error) {
	if _, err := r.MachineStore.Get(ctx, r.DB, machineID); err != nil {
		return nil, err
	}
	limit, err := db.PageLimit(first)
	if err != nil {
		return nil, err
	}
	types := db.EventTypesKey(eventTypes)
	page, err := dataloaders.For(ctx).EventPage(ctx, db.EventPageKey{MachineID: machineID, First: limit, After: deref(after), Types: types})
	return model.NewMachineEventConnection(page, machineID, types), err
}

// derefAll turns a list of non-null input objects into values.
func derefAll[T any](in []*T) []T {
	out := make([]T, len(in))
	for i, p := range in {
		out[i] = *p
	}
	return out
}

// rememberJobs lets the relations of a page of jobs (their robots and
// workflows, their logs) load in one batch each.
func rememberJobs(ctx context.Context, jobs []*db.Job) {
	dataloaders.For(ctx).RememberJobs(jobs)
}

// selects reports whether the object the field being resolved returns (of
// GraphQL type typ) has child selected, fragments included: a resolver
// looks ahead to read a relation in its own statement.
func selects(ctx context.Context, typ, child string) bool {
	for _, f := range graphql.CollectFieldsCtx(ctx, []string{typ}) {
		if f.Name == child {
			return true
		}
	}
	return false
}

// alone lets the relations of a row the API returns on its own (a point
// read, a mutation's answer) load at once, as a page of one, rather than
// wait out the loaders' batching window for siblings that never come.
func alone[T any](ctx context.Context, row *T) *T {
	if row == nil {
		return nil
	}
	l := dataloaders.For(ctx)
	switch r := any(row).(type) {
	case *db.Job:
		l.RememberJobs([]*db.Job{r})
		if r.NextLease != nil {
			l.RememberJobs([]*db.Job{r.NextLease.Job})
		}
	case *db.JobLease:
		l.RememberJobs([]*db.Job{r.Job})
	case *db.Robot:
		l.RememberPage(dataloaders.Robots, []uuid.UUID{r.ID})
	case *db.Machine:
		l.RememberPage(dataloaders.Machines, []uuid.UUID{r.ID})
	case *db.Workflow:
		l.RememberPage(dataloaders.Workflows, []uuid.UUID{r.ID})
	case *db.Schedule:
		l.RememberPage(dataloaders.Workflows, []uuid.UUID{r.WorkflowID})
	case *db.WorkflowAssignment:
		l.RememberPage(dataloaders.Robots, []uuid.UUID{r.RobotID})
	}
	return row
}

// eventDetails is logMachineEvent's details: the object, or the string an
// agent of the API Fleetgraph replaces sends, which @acceptsText lets past
// the JSON scalar; it is read from the argument as given.
func eventDetails(ctx context.Context, object map[string]any) db.EventDetails {
	if fc := graphql.GetFieldContext(ctx); fc != nil {
		if text, ok := fc.Field.ArgumentMap(graphql.GetOperationContext(ctx).Variables)["details"].(string); ok {
			return db.EventDetails{Text: &text}
		}
	}
	return db.EventDetails{Object: object}
}

// acceptsText implements @acceptsText: a string given for the argument
// passes (as no object; the resolver reads the string itself), anything
// else is unmarshalled as the argument's scalar says.
func acceptsText(ctx context.Context, obj any, next graphql.Resolver) (any, error) {
	args, _ := obj.(map[string]any)
	if pc := graphql.GetPathContext(ctx); pc != nil && pc.Field != nil {
		if _, ok := args[*pc.Field].(string); ok {
			return nil, nil
		}
	}
	return next(ctx)
}

// jobsOf is the job of each lease.
func jobsOf(leases []*db.JobLease) []*db.Job {
	jobs := make([]*db.Job, len(leases))
	for i, l := range leases {
		jobs[i] = l.Job
	}
	return jobs
}
