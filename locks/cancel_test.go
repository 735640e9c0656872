package locks

import (
	"fmt"
	"testing"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
)

func cmdAcqReq(lease, req uint64, names ...string) *statev1.Command {
	return cmdAcquire(&statev1.Acquire{Names: names, LeaseId: lease, RequestId: req})
}

func cmdCancelReq(lease, req uint64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Cancel{Cancel: &statev1.Cancel{LeaseId: lease, RequestId: req}}}
}

// Cancel by request id undoes whatever that acquire did and makes the id
// answer Aborted from then on, even to an acquire applied after the cancel.
func TestCancelByRequestID(t *testing.T) {
	t.Run("before the acquire is applied", func(t *testing.T) {
		h := newHarness(t)
		a := h.lease()
		h.ok(h.apply(cmdCancelReq(a, 7)))
		h.unchanged("a late acquire of a cancelled request", func() {
			h.fails(h.apply(cmdAcqReq(a, 7, "x")), Aborted)
		})
		if len(h.holders("x")) != 0 {
			t.Fatal("the cancelled request took the lock")
		}
	})
	t.Run("queued", func(t *testing.T) {
		h := newHarness(t)
		a, b, c := h.lease(), h.lease(), h.lease()
		tok := h.hold(a, "x")
		res := h.ok(h.apply(cmdAcqReq(b, 3, "x")))
		if res.Granted {
			t.Fatal("granted while held")
		}
		wc := h.queue(c, "x")
		h.ok(h.apply(cmdCancelReq(b, 3)))
		if w := h.waiters("x"); len(w) != 1 || w[0] != wc {
			t.Fatalf("waiters %v, want only c's %d", w, wc)
		}
		h.fails(h.apply(cmdAcqReq(b, 3, "x")), Aborted)
		h.release(a, "x", tok)
		if got := h.holders("x"); len(got) != 1 || got[0] != c {
			t.Fatalf("holders %v, want c", got)
		}
	})
	t.Run("granted", func(t *testing.T) {
		h := newHarness(t)
		a, b := h.lease(), h.lease()
		res := h.ok(h.apply(cmdAcqReq(a, 5, "x", "y")))
		if !res.Granted {
			t.Fatal("not granted")
		}
		h.queue(b, "y")
		h.ok(h.apply(cmdCancelReq(a, 5)))
		if len(h.holders("x")) != 0 {
			t.Fatal("the cancelled grant still holds x")
		}
		if got := h.holders("y"); len(got) != 1 || got[0] != b {
			t.Fatalf("y went to %v, want b", got)
		}
		var lost int
		for _, e := range h.events {
			if e.Type == Released && e.LeaseID == a && e.Reason == "withdrawn" {
				lost++
			}
		}
		if lost != 2 {
			t.Fatalf("%d withdrawal releases reported, want 2", lost)
		}
	})
	t.Run("a reentrant acquire cancelled keeps the earlier grant", func(t *testing.T) {
		h := newHarness(t)
		a := h.lease()
		tok := h.hold(a, "x")
		res := h.ok(h.apply(cmdAcqReq(a, 9, "x")))
		if !res.Granted || res.Tokens[0] != tok {
			t.Fatalf("re-acquire: %+v", res)
		}
		h.ok(h.apply(cmdCancelReq(a, 9)))
		if got := h.holders("x"); len(got) != 1 || got[0] != a {
			t.Fatalf("holders %v: cancelling a reentrant acquire released the earlier grant", got)
		}
	})
	t.Run("unknown lease", func(t *testing.T) {
		h := newHarness(t)
		h.lease()
		h.unchanged("cancel for an unknown lease", func() {
			h.fails(h.apply(cmdCancelReq(99, 1)), NotFound)
		})
	})
}

func cmdAcqTry(lease, req uint64, attempt uint32, names ...string) *statev1.Command {
	return cmdAcquire(&statev1.Acquire{Names: names, LeaseId: lease, RequestId: req, Attempt: attempt})
}

func cmdCancelTry(lease, req uint64, attempt uint32) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Cancel{Cancel: &statev1.Cancel{LeaseId: lease, RequestId: req, Attempt: attempt}}}
}

// A client whose connection to one node broke retries the request on
// another, numbered as a later try; the first node, seeing its caller gone,
// cancels its own try. Whatever order the commands reach the table in, the
// client never holds a lock it was not told of, nor loses one it was told
// it holds.
func TestCancelOfAnEarlierTry(t *testing.T) {
	t.Run("granted to the later try, then the earlier cancelled", func(t *testing.T) {
		h := newHarness(t)
		a, b := h.lease(), h.lease()
		tok := h.hold(a, "x")
		if h.ok(h.apply(cmdAcqTry(b, 7, 1, "x"))).Granted {
			t.Fatal("granted while held")
		}
		if res := h.ok(h.apply(cmdAcqTry(b, 7, 2, "x"))); !res.Duplicate {
			t.Fatalf("the retry was not taken for the same request: %+v", res)
		}
		h.release(a, "x", tok)
		if got := h.holders("x"); len(got) != 1 || got[0] != b {
			t.Fatalf("holders %v, want b", got)
		}
		h.unchanged("the cancel of the first try", func() {
			if res := h.ok(h.apply(cmdCancelTry(b, 7, 1))); !res.Ignored {
				t.Fatalf("cancel of a superseded try: %+v, want ignored", res)
			}
		})
	})
	t.Run("the earlier try applied after the later", func(t *testing.T) {
		h := newHarness(t)
		b := h.lease()
		if !h.ok(h.apply(cmdAcqTry(b, 7, 2, "x"))).Granted {
			t.Fatal("not granted")
		}
		h.ok(h.apply(cmdAcqTry(b, 7, 1, "x"))) // a duplicate, late
		h.unchanged("the cancel of the first try", func() {
			h.ok(h.apply(cmdCancelTry(b, 7, 1)))
		})
	})
	t.Run("the earlier try cancelled first", func(t *testing.T) {
		h := newHarness(t)
		a, b := h.lease(), h.lease()
		h.hold(a, "x")
		h.ok(h.apply(cmdAcqTry(b, 7, 1, "x")))
		h.ok(h.apply(cmdCancelTry(b, 7, 1)))
		if len(h.waiters("x")) != 0 {
			t.Fatal("the cancelled try is still queued")
		}
		// The later try learns the request was cancelled, and starts anew.
		h.fails(h.apply(cmdAcqTry(b, 7, 2, "x")), Aborted)
		if len(h.waiters("x")) != 0 {
			t.Fatal("the later try of a cancelled request queued")
		}
	})
	t.Run("the request forgotten, and the table restored from a snapshot", func(t *testing.T) {
		h := newHarness(t)
		a, b := h.lease(), h.lease()
		tok := h.hold(a, "x")
		w := h.ok(h.apply(cmdAcqTry(b, 7, 1, "x"))).WaiterID
		h.ok(h.apply(cmdAcqTry(b, 7, 2, "x")))
		h.release(a, "x", tok)
		// The lease's later requests push request 7 out of its memory.
		for i := range uint64(dedupPerLease) {
			h.ok(h.apply(cmdAcqReq(b, 100+i, fmt.Sprintf("other/%d", i))))
		}
		restored := NewTable()
		if err := restored.Restore(h.snap()); err != nil {
			t.Fatal(err)
		}
		h.tab = restored
		cancel := &statev1.Command{Op: &statev1.Command_Cancel{Cancel: &statev1.Cancel{LeaseId: b, RequestId: 7, Attempt: 1, WaiterId: w}}}
		h.unchanged("the cancel of the first try", func() {
			if res := h.ok(h.apply(cancel)); !res.Ignored {
				t.Fatalf("cancel of a superseded try: %+v, want ignored", res)
			}
		})
		if got := h.holders("x"); len(got) != 1 || got[0] != b {
			t.Fatalf("holders %v, want b", got)
		}
	})
	t.Run("a grant another request was told of", func(t *testing.T) {
		h := newHarness(t)
		b := h.lease()
		w := h.ok(h.apply(cmdAcqTry(b, 7, 1, "x"))).WaiterID
		// Another request of the lease (another goroutine of its session)
		// acquires the lock it holds, and is told it holds it.
		if !h.ok(h.apply(cmdAcqTry(b, 8, 1, "x"))).Granted {
			t.Fatal("a reentrant acquire was not granted")
		}
		cancel := &statev1.Command{Op: &statev1.Command_Cancel{Cancel: &statev1.Cancel{LeaseId: b, RequestId: 7, Attempt: 1, WaiterId: w}}}
		h.ok(h.apply(cancel))
		if got := h.holders("x"); len(got) != 1 || got[0] != b {
			t.Fatalf("holders %v: the withdrawal of one request released a grant another was told of", got)
		}
	})
	t.Run("the latest try cancelled", func(t *testing.T) {
		h := newHarness(t)
		b := h.lease()
		h.ok(h.apply(cmdAcqTry(b, 7, 1, "x")))
		h.ok(h.apply(cmdAcqTry(b, 7, 2, "x")))
		h.ok(h.apply(cmdCancelTry(b, 7, 2)))
		if len(h.holders("x")) != 0 {
			t.Fatal("the cancelled request still holds x")
		}
	})
}
