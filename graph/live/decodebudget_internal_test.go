package live

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"fleetgraph/fault"
)

// addr names an address for Take.
func addr(a string) func() string { return func() string { return a } }

func TestJSONElements(t *testing.T) {
	t.Parallel()
	for doc, want := range map[string]int{
		`{}`:                           1,
		`{"a":1}`:                      1,
		`{"a":1,"b":[1,2,3]}`:          5,
		`[{},{},{}]`:                   6,
		`"{[,]}"`:                      0,
		`{"a\"{[,":"\\",  "b" : [ ] }`: 3,
		``:                             0,
	} {
		require.Equal(t, want, JSONElements([]byte(doc)), doc)
	}
}

// A document over MaxDocumentElements is refused whatever its size; one
// address holds at most a quarter of the budget (more is refused at
// once); the process's budget is waited for, and given back on release.
func TestDecodeBudget(t *testing.T) {
	t.Parallel()
	many := []byte("[" + strings.Repeat("0,", MaxDocumentElements) + "0]")
	_, err := NewDecodeBudget(0).Take(t.Context(), addr("a"), many)
	require.Equal(t, fault.BadUserInput, fault.CodeOf(err), "%v", err)
	_, err = (*DecodeBudget)(nil).Take(t.Context(), addr("a"), many)
	require.Equal(t, fault.BadUserInput, fault.CodeOf(err), "a nil budget still counts the elements")

	small, err := NewDecodeBudget(1).Take(t.Context(), addr("a"), []byte(`{"query":"{ me { id } }"}`))
	require.NoError(t, err)
	require.Nil(t, small, "a small document takes nothing")

	// Each document weighs 1,000 elements: 128,000 bytes and its own.
	doc := []byte("[" + strings.Repeat("{},", 999) + "{}]")
	weight := int64(len(doc)) + 2000*elementBytes
	b := NewDecodeBudget(4 * 2 * weight) // two documents per address
	r1, err := b.Take(t.Context(), addr("a"), doc)
	require.NoError(t, err)
	r2, err := b.Take(t.Context(), addr("a"), doc)
	require.NoError(t, err)
	_, err = b.Take(t.Context(), addr("a"), doc)
	require.Equal(t, fault.RateLimited, fault.CodeOf(err), "a third at once from one address: %v", err)

	// Other addresses fill the rest of the budget; the next waits.
	var others []func()
	for _, a := range []string{"b", "b", "c", "c", "d", "d"} {
		r, err := b.Take(t.Context(), addr(a), doc)
		require.NoError(t, err)
		others = append(others, r)
	}
	took := make(chan error, 1)
	go func() {
		r, err := b.Take(context.Background(), addr("e"), doc)
		if err == nil {
			r()
		}
		took <- err
	}()
	select {
	case err := <-took:
		t.Fatalf("took a spent budget: %v", err)
	default:
	}
	r1()
	r1() // releasing twice gives back once
	require.NoError(t, <-took)
	r2()
	for _, r := range others {
		r()
	}
	require.Empty(t, b.held, "every address forgotten")

	// A wait that ends refuses as busy.
	full := NewDecodeBudget(4 * weight)
	hold, err := full.Take(t.Context(), addr("a"), doc)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = full.Take(ctx, addr("b"), doc)
	require.Equal(t, fault.RateLimited, fault.CodeOf(err), "%v", err)
	hold()
}
