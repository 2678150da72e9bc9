package metrics

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestOperationLabelsAreBounded(t *testing.T) {
	t.Parallel()
	m := New(nil)
	caller := func(i int) string { return fmt.Sprintf("tenant/user:%d", i) }
	require.Equal(t, Unnamed, m.OperationLabel("", caller(0)))
	require.Equal(t, Other, m.OperationLabel("FromNobody", ""), "anonymous callers add no names")
	require.Equal(t, Other, m.OperationLabel(strings.Repeat("A", maxNameLength+1), caller(0)), "overlong names are not labels")
	for i := range MaxOperationNames {
		name := fmt.Sprintf("Op%d", i)
		require.Equal(t, name, m.OperationLabel(name, caller(i/MaxOperationNamesPerCaller)))
	}
	require.Equal(t, Other, m.OperationLabel("OneTooMany", "tenant/user:new"), "the cap holds")
	require.Equal(t, "Op7", m.OperationLabel("Op7", ""), "a known name is a label for anyone")
	require.Len(t, m.names.known, MaxOperationNames)
	require.Len(t, m.names.added, MaxOperationNames/MaxOperationNamesPerCaller, "only callers that added names are kept")
}

// One caller adds at most MaxOperationNamesPerCaller names, so it cannot
// use up the label's values for everyone; names it made known stay labels,
// for it and for others.
func TestOperationLabelsAreSharedOut(t *testing.T) {
	t.Parallel()
	m := New(nil)
	for i := range MaxOperationNames + 5 {
		name := fmt.Sprintf("AcmeCorp_customer_%d", i)
		want := name
		if i >= MaxOperationNamesPerCaller {
			want = Other
		}
		require.Equal(t, want, m.OperationLabel(name, "acme/user:squatter"))
	}
	require.Equal(t, "AcmeCorp_customer_3", m.OperationLabel("AcmeCorp_customer_3", "acme/user:squatter"))
	require.Equal(t, "AcmeCorp_customer_3", m.OperationLabel("AcmeCorp_customer_3", "other/user:someone"))
	require.Equal(t, "RealDashboard", m.OperationLabel("RealDashboard", "other/user:someone"), "another caller still adds names")
	require.Equal(t, "RealDashboard", m.OperationLabel("RealDashboard", "acme/user:squatter"), "a name another caller added is known to all")
	require.Len(t, m.names.known, MaxOperationNamesPerCaller+1)
}

func TestNilMetricsRecordNothing(t *testing.T) {
	t.Parallel()
	var m *Metrics
	m.Request("POST", 200, "", 0)
	m.StreamOpened("sse")()
	m.OperationWaiting()()
	m.Operation("query", "Q", "ok", 0)
	m.Error("INTERNAL")
	m.Subscribers("machine", 1)
	m.Delivered("machine", 1)
	m.Coalesced("machine")
	m.SlowConsumer("machine")
	m.Resynced()
	m.Reconnected()
	m.Dropped("c")
	m.ClaimReturned(1, time.Now(), true, nil)
	m.LeaseRescued("QUEUED")
	m.WatchDatabase(nil, nil)
	require.Equal(t, Other, m.OperationLabel("Q", "tenant/user:1"))
}
