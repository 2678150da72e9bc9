package live

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLifetime checks when AtEnd runs what it is given: at once for a
// request served by its handler (or without a lifetime); for a detached
// one, when its serve returns, in the order given; and at once again once
// a detached request has ended.
func TestLifetime(t *testing.T) {
	t.Parallel()
	var ran []string
	AtEnd(context.Background(), func() { ran = append(ran, "no lifetime") })
	ctx := WithLifetime(context.Background())
	AtEnd(ctx, func() { ran = append(ran, "not detached") })
	require.Equal(t, []string{"no lifetime", "not detached"}, ran)
	require.False(t, detach(context.Background(), func() {}), "no lifetime: the caller serves")

	ran = nil
	ctx = WithLifetime(context.Background())
	release, served := make(chan struct{}), make(chan struct{})
	require.True(t, detach(ctx, func() { <-release }))
	AtEnd(ctx, func() { ran = append(ran, "inner") })
	AtEnd(ctx, func() { ran = append(ran, "outer"); close(served) })
	require.Empty(t, ran, "nothing runs while the socket is served")
	close(release)
	<-served
	require.Equal(t, []string{"inner", "outer"}, ran)

	AtEnd(ctx, func() { ran = append(ran, "late") })
	require.Equal(t, []string{"inner", "outer", "late"}, ran, "after the end, at once")
}
