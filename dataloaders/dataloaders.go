// Package dataloaders batches the reads of one GraphQL operation: each
// relation a resolver asks for is fetched with one keyed statement
// (`= ANY(...)`), results matched by key, never by row order. Loaders live in
// the operation's context, so caching never outlives it and every read runs
// with the operation's principal (and so its scope).
//
// Batching of list pages does not rely on timing. A list resolver records
// the ids of the page it returns (RememberPage); the first row whose
// relation is asked for fetches it for every row of its page with one keyed
// statement and primes the loader's cache; the other rows wait for that and
// read the cache. A page of 500 therefore costs the same statements as a page
// of 5 however the scheduler interleaves resolvers. The children one
// batched fetch returns (the current jobs of a page of robots) form a page
// in turn, and a row returned on its own (a point read, a mutation's
// answer) is a page of one, fetched at once. Rows not listed in any page
// batch by dataloadgen's short time window.
package dataloaders

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
	"github.com/vikstrous/dataloadgen"

	"fleetgraph/db"
)

// wait is how long a loader collects keys before fetching: long enough for
// the resolvers of one list to queue up, short enough to be invisible.
const wait = 2 * time.Millisecond

// Kinds of rows a page can list; loaders of a row's relations batch by page.
const (
	Machines  = "machine"
	Robots    = "robot"
	Workflows = "workflow"
	Jobs      = "job"
)

// Loaders are the batch loaders of one operation.
type Loaders struct {
	machineEvents     paged[db.EventPageKey, db.Page[db.MachineEvent]]
	machineEventCount paged[db.EventCountKey, int]
	deployments       paged[db.DeploymentListKey, []*db.Deployment]
	activeDeployment  paged[uuid.UUID, *db.Deployment]
	robot             paged[uuid.UUID, *db.Robot]
	currentJobs       paged[uuid.UUID, []*db.Job]
	workflow          paged[uuid.UUID, *db.Workflow]
	versions          paged[limitedKey, []*db.WorkflowVersion]
	assignments       paged[uuid.UUID, []*db.WorkflowAssignment]
	overrides         paged[uuid.UUID, []*db.NodeRobotOverride]
	jobLogs           paged[limitedKey, []*db.RobotLog]

	stores Stores

	mu    sync.Mutex
	pages map[pageKey][]uuid.UUID // a listed row -> the ids of its page
}

type pageKey struct {
	kind string
	id   uuid.UUID
}

// limitedKey asks for the first First children of ID (a job's log lines, a
// workflow's versions).
type limitedKey struct {
	ID    uuid.UUID
	First int
}

// limited runs a fetch of at most limit children per id for keys: one
// fetch per distinct limit among them.
func limited[V any](ctx context.Context, keys []limitedKey, fetch func(ids []uuid.UUID, limit int) (map[uuid.UUID][]V, error)) (map[limitedKey][]V, error) {
	byFirst := map[int][]uuid.UUID{}
	for _, k := range keys {
		byFirst[k.First] = append(byFirst[k.First], k.ID)
	}
	out := make(map[limitedKey][]V, len(keys))
	for first, ids := range byFirst {
		rows, err := fetch(ids, first)
		if err != nil {
			return nil, err
		}
		for id, r := range rows {
			out[limitedKey{id, first}] = r
		}
	}
	return out, nil
}

// Stores are what the loaders read from.
type Stores struct {
	DB        bun.IDB
	Machines  *db.Machines
	Robots    *db.Robots
	Workflows *db.Workflows
	Jobs      *db.Jobs
	Logs      *db.Logs
	// Columns, when set, names the columns the operation in ctx reads of
	// rows of GraphQL type typ (Job, Robot, Workflow; nil: all), so that a
	// fetch reads only those.
	Columns func(ctx context.Context, typ string) []string
}

// columns is s.Columns(ctx, typ), or nil (every column) without it.
func (s Stores) columns(ctx context.Context, typ string) []string {
	if s.Columns == nil {
		return nil
	}
	return s.Columns(ctx, typ)
}

// paged is a dataloadgen loader that can also load a whole page at once.
// The dataloadgen loader is built when first used: an operation uses one or
// two of its eleven relations, and building all of them cost a point read
// about 5% of its CPU.
type paged[K comparable, V any] struct {
	l *Loaders
	// fetch reads the values of keys; keys it leaves out get zero: for
	// these relations "nothing" is an answer, not dataloadgen's ErrNotFound.
	fetch func(ctx context.Context, l *Loaders, keys []K) (map[K]V, error)
	zero  V

	once   sync.Once
	loader *dataloadgen.Loader[K, V]

	mu    sync.Mutex
	pages map[K]*pageLoad[K, V] // by the key of the page's first row
}

// pageLoad is one page's fetch, run once for all its rows.
type pageLoad[K comparable, V any] struct {
	once   sync.Once
	values map[K]V
	err    error
}

// init sets what p loads and how.
func (p *paged[K, V]) init(l *Loaders, zero V, fetch func(ctx context.Context, l *Loaders, keys []K) (map[K]V, error)) {
	p.l, p.zero, p.fetch = l, zero, fetch
}

// load fetches keys, giving those without rows zero.
func (p *paged[K, V]) load(ctx context.Context, keys []K) (map[K]V, error) {
	m, err := p.fetch(ctx, p.l, keys)
	return withZeros(keys, m, p.zero), err
}

// get returns the dataloadgen loader, building it the first time.
func (p *paged[K, V]) get() *dataloadgen.Loader[K, V] {
	p.once.Do(func() { p.loader = dataloadgen.NewMappedLoader(p.load, dataloadgen.WithWait(wait)) })
	return p.loader
}

// loadPage fetches the keys of a page (led by first, built by keys only
// for the fetch) once, priming the cache, and returns the page's values:
// every row of a page asks, and all but the first find it fetched.
func (p *paged[K, V]) loadPage(ctx context.Context, first K, keys func() []K) (map[K]V, error) {
	p.mu.Lock()
	pl, ok := p.pages[first]
	if !ok {
		if p.pages == nil {
			p.pages = map[K]*pageLoad[K, V]{}
		}
		pl = &pageLoad[K, V]{}
		p.pages[first] = pl
	}
	p.mu.Unlock()
	pl.once.Do(func() {
		keys := keys()
		values, err := p.load(ctx, keys)
		if err != nil {
			pl.err = err
			return
		}
		for _, k := range keys {
			p.get().Prime(k, values[k])
		}
		pl.values = values
	})
	return pl.values, pl.err
}

// New returns fresh loaders for one operation, in one allocation: the
// loaders are fields of Loaders and their fetches functions of it, not
// closures over it, since a point read uses one or two of the eleven.
func New(s Stores) *Loaders {
	l := &Loaders{stores: s}
	l.machineEvents.init(l, db.Page[db.MachineEvent]{}, func(ctx context.Context, l *Loaders, keys []db.EventPageKey) (map[db.EventPageKey]db.Page[db.MachineEvent], error) {
		return l.stores.Machines.EventPages(ctx, l.stores.DB, keys)
	})
	l.machineEventCount.init(l, 0, func(ctx context.Context, l *Loaders, keys []db.EventCountKey) (map[db.EventCountKey]int, error) {
		return l.stores.Machines.EventCounts(ctx, l.stores.DB, keys)
	})
	l.deployments.init(l, []*db.Deployment{}, func(ctx context.Context, l *Loaders, keys []db.DeploymentListKey) (map[db.DeploymentListKey][]*db.Deployment, error) {
		return l.stores.Machines.DeploymentLists(ctx, l.stores.DB, keys)
	})
	l.activeDeployment.init(l, nil, func(ctx context.Context, l *Loaders, ids []uuid.UUID) (map[uuid.UUID]*db.Deployment, error) {
		return l.stores.Machines.ActiveDeployments(ctx, l.stores.DB, ids)
	})
	l.robot.init(l, nil, func(ctx context.Context, l *Loaders, ids []uuid.UUID) (map[uuid.UUID]*db.Robot, error) {
		return l.stores.Robots.FindMany(ctx, l.stores.DB, ids, l.stores.columns(ctx, "Robot")...)
	})
	l.currentJobs.init(l, []*db.Job{}, func(ctx context.Context, l *Loaders, ids []uuid.UUID) (map[uuid.UUID][]*db.Job, error) {
		byRobot, err := l.stores.Jobs.CurrentJobsOf(ctx, l.stores.DB, ids, l.stores.columns(ctx, "Job"))
		l.RememberJobs(flatten(byRobot))
		return byRobot, err
	})
	l.workflow.init(l, nil, func(ctx context.Context, l *Loaders, ids []uuid.UUID) (map[uuid.UUID]*db.Workflow, error) {
		return l.stores.Workflows.FindMany(ctx, l.stores.DB, ids, l.stores.columns(ctx, "Workflow")...)
	})
	l.versions.init(l, []*db.WorkflowVersion{}, func(ctx context.Context, l *Loaders, keys []limitedKey) (map[limitedKey][]*db.WorkflowVersion, error) {
		return limited(ctx, keys, func(ids []uuid.UUID, limit int) (map[uuid.UUID][]*db.WorkflowVersion, error) {
			return l.stores.Workflows.VersionsOf(ctx, l.stores.DB, ids, limit)
		})
	})
	l.assignments.init(l, []*db.WorkflowAssignment{}, func(ctx context.Context, l *Loaders, ids []uuid.UUID) (map[uuid.UUID][]*db.WorkflowAssignment, error) {
		byWorkflow, err := l.stores.Workflows.AssignmentsOf(ctx, l.stores.DB, ids)
		l.RememberPage(Robots, IDs(flatten(byWorkflow), func(a *db.WorkflowAssignment) *uuid.UUID { return &a.RobotID }))
		return byWorkflow, err
	})
	l.overrides.init(l, []*db.NodeRobotOverride{}, func(ctx context.Context, l *Loaders, ids []uuid.UUID) (map[uuid.UUID][]*db.NodeRobotOverride, error) {
		return l.stores.Workflows.OverridesOf(ctx, l.stores.DB, ids)
	})
	l.jobLogs.init(l, []*db.RobotLog{}, func(ctx context.Context, l *Loaders, keys []limitedKey) (map[limitedKey][]*db.RobotLog, error) {
		return limited(ctx, keys, func(ids []uuid.UUID, limit int) (map[uuid.UUID][]*db.RobotLog, error) {
			return l.stores.Logs.LogsOf(ctx, l.stores.DB, ids, limit)
		})
	})
	return l
}

// flatten lists the rows of a keyed fetch: the children fetched together
// form a page of their own, so their relations load in one batch too.
func flatten[K comparable, V any](m map[K][]*V) []*V {
	var out []*V
	for _, rows := range m {
		out = append(out, rows...)
	}
	return out
}

// RememberPage records that rows of a kind (Machines, Robots, Workflows,
// Jobs) were listed together, so their relations load in one batch.
// Duplicate and nil ids are ignored, and a row keeps the first page it was
// listed in (its relations may be loading with that page already), so
// pages never overlap.
func (l *Loaders) RememberPage(kind string, ids []uuid.UUID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fresh := slices.DeleteFunc(distinct(ids), func(id uuid.UUID) bool {
		_, listed := l.pages[pageKey{kind, id}]
		return listed
	})
	if l.pages == nil && len(fresh) > 0 {
		l.pages = make(map[pageKey][]uuid.UUID, len(fresh))
	}
	for _, id := range fresh {
		l.pages[pageKey{kind, id}] = fresh
	}
}

// IDs returns the ids of rows, for RememberPage.
func IDs[T any](rows []*T, id func(*T) *uuid.UUID) []uuid.UUID {
	out := make([]uuid.UUID, 0, len(rows))
	for _, r := range rows {
		if p := id(r); p != nil {
			out = append(out, *p)
		}
	}
	return out
}

func distinct(ids []uuid.UUID) []uuid.UUID {
	seen := make(map[uuid.UUID]bool, len(ids))
	out := make([]uuid.UUID, 0, len(ids))
	for _, id := range ids {
		if id != uuid.Nil && !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// RememberJobs lets the relations of jobs listed together (their robots,
// workflows and logs) load in one batch each.
func (l *Loaders) RememberJobs(jobs []*db.Job) {
	l.RememberPage(Jobs, IDs(jobs, func(j *db.Job) *uuid.UUID { return &j.ID }))
	l.RememberPage(Robots, IDs(jobs, func(j *db.Job) *uuid.UUID { return j.RobotID }))
	l.RememberPage(Workflows, IDs(jobs, func(j *db.Job) *uuid.UUID { return &j.WorkflowID }))
}

// siblings returns the ids listed with id; listed is false when id was in
// no page.
func (l *Loaders) siblings(kind string, id uuid.UUID) (ids []uuid.UUID, listed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ids, listed = l.pages[pageKey{kind, id}]
	return ids, listed
}

// loadWithPage loads own's value. When id's row was listed in a page, the
// relation is first fetched for the whole page, once, at once (a page of
// one included: a row returned on its own has no siblings to wait for);
// otherwise dataloadgen batches it with whatever else asks within its
// window. withID makes a row's key from own's.
func loadWithPage[K comparable, V any](ctx context.Context, l *Loaders, loader *paged[K, V], kind string, own K, id uuid.UUID, withID func(K, uuid.UUID) K) (V, error) {
	if page, listed := l.siblings(kind, id); listed {
		values, err := loader.loadPage(ctx, withID(own, page[0]), func() []K {
			keys := make([]K, len(page))
			for i, sibling := range page {
				keys[i] = withID(own, sibling)
			}
			return keys
		})
		if v, ok := values[own]; ok || err != nil {
			return v, err
		}
	}
	return loader.get().Load(ctx, own)
}

func byID(_ uuid.UUID, id uuid.UUID) uuid.UUID { return id }

// EventPage returns a page of one machine's events.
func (l *Loaders) EventPage(ctx context.Context, key db.EventPageKey) (db.Page[db.MachineEvent], error) {
	return loadWithPage(ctx, l, &l.machineEvents, Machines, key, key.MachineID, func(k db.EventPageKey, id uuid.UUID) db.EventPageKey {
		k.MachineID = id
		return k
	})
}

// EventCount counts one machine's events.
func (l *Loaders) EventCount(ctx context.Context, key db.EventCountKey) (int, error) {
	return loadWithPage(ctx, l, &l.machineEventCount, Machines, key, key.MachineID, func(k db.EventCountKey, id uuid.UUID) db.EventCountKey {
		k.MachineID = id
		return k
	})
}

// DeploymentList returns one machine's newest deployments.
func (l *Loaders) DeploymentList(ctx context.Context, key db.DeploymentListKey) ([]*db.Deployment, error) {
	return loadWithPage(ctx, l, &l.deployments, Machines, key, key.MachineID, func(k db.DeploymentListKey, id uuid.UUID) db.DeploymentListKey {
		k.MachineID = id
		return k
	})
}

// ActiveDeployment returns a machine's ACTIVE deployment, or nil.
func (l *Loaders) ActiveDeployment(ctx context.Context, machineID uuid.UUID) (*db.Deployment, error) {
	return loadWithPage(ctx, l, &l.activeDeployment, Machines, machineID, machineID, byID)
}

// Robot returns a visible robot by id, or nil.
func (l *Loaders) Robot(ctx context.Context, id uuid.UUID) (*db.Robot, error) {
	return loadWithPage(ctx, l, &l.robot, Robots, id, id, byID)
}

// CurrentJobs returns the jobs a robot holds now.
func (l *Loaders) CurrentJobs(ctx context.Context, robotID uuid.UUID) ([]*db.Job, error) {
	return loadWithPage(ctx, l, &l.currentJobs, Robots, robotID, robotID, byID)
}

// Workflow returns a visible workflow by id, or nil.
func (l *Loaders) Workflow(ctx context.Context, id uuid.UUID) (*db.Workflow, error) {
	return loadWithPage(ctx, l, &l.workflow, Workflows, id, id, byID)
}

// Versions returns a workflow's newest versions, at most first.
func (l *Loaders) Versions(ctx context.Context, workflowID uuid.UUID, first int) ([]*db.WorkflowVersion, error) {
	return loadWithPage(ctx, l, &l.versions, Workflows, limitedKey{workflowID, first}, workflowID, withID)
}

// Assignments returns a workflow's assignments, default first.
func (l *Loaders) Assignments(ctx context.Context, workflowID uuid.UUID) ([]*db.WorkflowAssignment, error) {
	return loadWithPage(ctx, l, &l.assignments, Workflows, workflowID, workflowID, byID)
}

// Overrides returns a workflow's node overrides.
func (l *Loaders) Overrides(ctx context.Context, workflowID uuid.UUID) ([]*db.NodeRobotOverride, error) {
	return loadWithPage(ctx, l, &l.overrides, Workflows, workflowID, workflowID, byID)
}

// JobLogs returns a job's newest log lines, at most first.
func (l *Loaders) JobLogs(ctx context.Context, jobID uuid.UUID, first int) ([]*db.RobotLog, error) {
	return loadWithPage(ctx, l, &l.jobLogs, Jobs, limitedKey{jobID, first}, jobID, withID)
}

// withID re-keys a limited key for a sibling row of the same page.
func withID(k limitedKey, id uuid.UUID) limitedKey {
	k.ID = id
	return k
}

// withZeros gives keys with no rows an explicit empty value: for these
// relations "nothing" is an answer, not dataloadgen's ErrNotFound.
func withZeros[K comparable, V any](keys []K, m map[K]V, zero V) map[K]V {
	if m == nil {
		return nil
	}
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			m[k] = zero
		}
	}
	return m
}

type loadersKey struct{}

// lazy builds a response's loaders on first use: most subscription events
// resolve no relation, and building eleven loaders for each would be waste.
type lazy struct {
	once    sync.Once
	stores  Stores
	loaders *Loaders
}

// With returns a context in which For builds loaders over s, once, when
// first asked. The server installs it for every response.
func With(ctx context.Context, s Stores) context.Context {
	return context.WithValue(ctx, loadersKey{}, &lazy{stores: s})
}

// For returns the response's loaders. It panics when the server did not
// install them, which is a wiring bug caught by every test.
func For(ctx context.Context) *Loaders {
	l := ctx.Value(loadersKey{}).(*lazy)
	l.once.Do(func() { l.loaders = New(l.stores) })
	return l.loaders
}
