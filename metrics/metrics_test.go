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
	require.Equal(t, Unnamed, m.OperationLabel("", true))
	require.Equal(t, Other, m.OperationLabel("FromNobody", false), "anonymous callers add no names")
	require.Equal(t, Other, m.OperationLabel(strings.Repeat("A", maxNameLength+1), true), "overlong names are not labels")
	for i := range MaxOperationNames {
		name := fmt.Sprintf("Op%d", i)
		require.Equal(t, name, m.OperationLabel(name, true))
	}
	require.Equal(t, Other, m.OperationLabel("OneTooMany", true), "the cap holds")
	require.Equal(t, "Op7", m.OperationLabel("Op7", false), "a known name is a label for anyone")
	require.Len(t, m.names.known, MaxOperationNames)
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
	require.Equal(t, Other, m.OperationLabel("Q", true))
}
