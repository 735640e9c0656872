package locks

import (
	"bytes"
	"testing"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
)

// Results are replicated state (a request id keeps them for retries), so
// even an error's message must not depend on Go's map order. These tests
// repeat a command whose failure several parts of the table could explain;
// with a random choice they would see different messages.

func TestOverlappingWaitConflictIsDeterministic(t *testing.T) {
	h := newHarness(t)
	a, b := h.lease(), h.lease()
	for _, n := range []string{"p", "q", "r", "s"} {
		h.hold(a, n)
	}
	// b waits for each lock in a request of its own.
	for _, n := range []string{"s", "q", "r", "p"} {
		h.queue(b, n)
	}
	var first string
	for i := range 50 {
		h.unchanged("overlapping acquire", func() {
			res := h.apply(cmdAcq(b, "p", "q", "r", "s", "t"))
			h.fails(res, Conflict)
			if i == 0 {
				first = res.Err.Msg
			} else if res.Err.Msg != first {
				t.Fatalf("message %q, earlier %q", res.Err.Msg, first)
			}
		})
	}
	// The oldest overlapping waiter (the one for s) is reported.
	if want := `lease 2 already waits for lock "s" in another request`; first != want {
		t.Fatalf("message %q, want %q", first, want)
	}
}

func TestNamespaceQuotaErrorIsDeterministic(t *testing.T) {
	// Filling two namespaces with real waiters costs seconds under -race
	// (TestQuotas fills one for real); the quota check reads only the
	// per-namespace counts, so set them, and put them back afterwards.
	h := newHarness(t)
	l := h.lease()
	h.tab.nsWaits["n1"] = MaxWaitersPerNamespace
	h.tab.nsWaits["n2"] = MaxWaitersPerNamespace
	before := h.snap()
	for range 50 {
		res := h.raw(encode(cmdAcquire(&statev1.Acquire{LeaseId: l, Names: []string{"n2/new", "n1/new"}})))
		h.fails(res, Quota)
		if want := `namespace "n2" has 100000 waiters, its limit`; res.Err.Msg != want {
			t.Fatalf("message %q, want %q (the first name's namespace)", res.Err.Msg, want)
		}
	}
	if !bytes.Equal(before, h.snap()) {
		t.Fatal("failed acquires changed the table")
	}
	delete(h.tab.nsWaits, "n1")
	delete(h.tab.nsWaits, "n2")
	if err := checkInvariants(h.tab); err != nil {
		t.Fatal(err)
	}
}
