package graph_test

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// RFC 3339 allows UTC offsets up to ±23:59; PostgreSQL refuses those past
// ±15:59. A time the API takes (a filter, a cursor's position) is the same
// instant whatever its offset, and works the same: it once reached the
// database with its offset as written and failed the statement (INTERNAL).
func TestTimesWithFarOffsets(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := apitest.NewTenant(t, s)
	for i := range 2 {
		tn.Do(t, `mutation($n: String!) { createMachine(input: {name: $n}) { id } }`, map[string]any{"n": fmt.Sprint("m", i)}, nil)
		tn.CreateRobot(t, fmt.Sprint("r", i), apitest.RobotOpts{})
		tn.Do(t, `mutation($n: String!) { createWorkflow(input: {name: $n, definition: {nodes: []}}) { id } }`, map[string]any{"n": fmt.Sprint("w", i)}, nil)
		tn.Enqueue(t, nil)
	}
	// far is the same instant with a +23:59 (or -23:59) offset.
	far := func(at time.Time, sign int) string {
		return at.In(time.FixedZone("far", sign*(23*3600+59*60))).Format(time.RFC3339Nano)
	}

	t.Run("Filters", func(t *testing.T) {
		hourAgo := time.Now().Add(-time.Hour)
		for _, sign := range []int{1, -1} {
			var out struct{ Jobs struct{ TotalCount int } }
			tn.Do(t, `query($a: Time, $b: Time) { jobs(filter: {createdAfter: $a, createdBefore: $b}) { totalCount } }`,
				map[string]any{"a": far(hourAgo, sign), "b": far(time.Now().Add(time.Hour), sign)}, &out)
			require.Equal(t, 2, out.Jobs.TotalCount)
		}
	})

	t.Run("Cursors", func(t *testing.T) {
		for _, list := range []string{"machines", "robots", "jobs", "workflows"} {
			page := func(after *string) (ids []string, end string) {
				var out map[string]struct {
					Edges    []struct{ Node struct{ ID string } }
					PageInfo struct{ EndCursor string }
				}
				tn.Do(t, `query($a: String) { `+list+`(first: 1, after: $a) { edges { node { id } } pageInfo { endCursor } } }`, map[string]any{"a": after}, &out)
				for _, e := range out[list].Edges {
					ids = append(ids, e.Node.ID)
				}
				return ids, out[list].PageInfo.EndCursor
			}
			_, cursor := page(nil)
			want, _ := page(&cursor)
			require.Len(t, want, 1, list)

			// The cursor's position, its time moved to a far offset.
			raw, err := base64.RawURLEncoding.DecodeString(cursor)
			require.NoError(t, err)
			kind, pos, ok := strings.Cut(string(raw), ":")
			require.True(t, ok, "%s", raw)
			ts, id, ok := strings.Cut(pos, "|")
			require.True(t, ok, "%s: a time and id cursor", list)
			at, err := time.Parse(time.RFC3339Nano, ts)
			require.NoError(t, err)
			for _, sign := range []int{1, -1} {
				forged := base64.RawURLEncoding.EncodeToString([]byte(kind + ":" + far(at, sign) + "|" + id))
				got, _ := page(&forged)
				require.Equal(t, want, got, "%s after the same position, written at another offset", list)
			}
		}
	})
}
