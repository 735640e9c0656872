package locks

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
)

// queuesOf records every non-empty queue of the table: the waiter ids, in
// queue order, per lock.
func queuesOf(t *Table) map[string][]uint64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make(map[string][]uint64, len(t.locks))
	for name, lk := range t.locks {
		if len(lk.queue) == 0 {
			continue
		}
		ids := make([]uint64, len(lk.queue))
		for i, w := range lk.queue {
			ids[i] = w.id
		}
		out[name] = ids
	}
	return out
}

// checkFairGrants checks one applied command against history: the queues
// before it, its events, and the queues after it. It replays the events on
// the queues before the command:
//
//   - Queued appends the new waiter to the lock's queue;
//   - Withdrawn (withdrawn, expired, revoked: a waiter that leaves without a
//     grant) removes it from wherever it stands;
//   - Granted must take the head of the lock's queue as it stands then: a
//     waiter from further back is a barging grant; a waiter the command
//     created without queuing it (a try) may be granted only to an empty
//     queue. So a new acquire is granted at once only if nobody waited, or if
//     everyone ahead of it was granted before it in the same command (the
//     consecutive shared waiters of a batch).
//
// A multi-lock waiter is checked on each of its locks: its Granted event on
// every lock must find it at the head there, and once granted it may wait
// nowhere. Finally the replayed queues must be the table's queues after the
// command, so no waiter joins or leaves a queue without its event.
func checkFairGrants(before map[string][]uint64, evs []Event, after map[string][]uint64) error {
	var errs []string
	fail := func(format string, args ...any) {
		if len(errs) < 10 {
			errs = append(errs, fmt.Sprintf(format, args...))
		}
	}
	q := make(map[string][]uint64, len(before))
	known := map[uint64]bool{} // waiters that were queued before the command
	for name, ids := range before {
		q[name] = slices.Clone(ids)
		for _, id := range ids {
			known[id] = true
		}
	}
	granted := map[uint64]bool{}
	withdrawn := map[uint64]bool{}
	for _, e := range evs {
		cur := q[e.Name]
		switch e.Type {
		case Queued:
			if known[e.WaiterID] || granted[e.WaiterID] || slices.Contains(cur, e.WaiterID) {
				fail("waiter %d queued for %q, but it existed already", e.WaiterID, e.Name)
			}
			if n := len(cur); n > 0 && cur[n-1] >= e.WaiterID {
				fail("waiter %d queued for %q behind the later waiter %d", e.WaiterID, e.Name, cur[n-1])
			}
			q[e.Name] = append(cur, e.WaiterID)
		case Withdrawn:
			i := slices.Index(cur, e.WaiterID)
			if i < 0 {
				fail("waiter %d withdrawn (%s) from %q, where it did not wait (queue %v)", e.WaiterID, e.Reason, e.Name, cur)
				continue
			}
			q[e.Name] = slices.Delete(slices.Clone(cur), i, i+1)
			withdrawn[e.WaiterID] = true
		case Granted:
			switch {
			case withdrawn[e.WaiterID]:
				fail("waiter %d granted %q after it was withdrawn", e.WaiterID, e.Name)
			case len(cur) > 0 && cur[0] == e.WaiterID:
				q[e.Name] = cur[1:]
			case slices.Contains(cur, e.WaiterID):
				fail("barging: waiter %d granted %q ahead of %v (queue %v)", e.WaiterID, e.Name, cur[:slices.Index(cur, e.WaiterID)], cur)
			case known[e.WaiterID]:
				fail("waiter %d granted %q, for which it was not waiting (queue %v)", e.WaiterID, e.Name, cur)
			case len(cur) > 0:
				fail("barging: new acquire %d granted %q at once while %v wait", e.WaiterID, e.Name, cur)
			}
			granted[e.WaiterID] = true
		}
	}
	names := slices.Sorted(maps.Keys(q))
	for name := range after {
		if _, ok := q[name]; !ok {
			names = append(names, name)
		}
	}
	for _, name := range names {
		if !slices.Equal(q[name], after[name]) {
			fail("queue of %q is %v after the command, but its events leave %v (from %v)", name, after[name], q[name], before[name])
		}
		for _, id := range after[name] {
			if granted[id] {
				fail("waiter %d was granted, but still waits for %q", id, name)
			}
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}

// The checker rejects hand-built barging transitions and accepts fair ones,
// so that TestProperties and FuzzApply could catch a barging table.
func TestCheckFairGrants(t *testing.T) {
	type qs = map[string][]uint64
	granted := func(name string, w uint64) Event {
		return Event{Type: Granted, Name: name, WaiterID: w, Token: 100 + w}
	}
	queued := func(name string, w uint64) Event { return Event{Type: Queued, Name: name, WaiterID: w} }
	withdrawn := func(name string, w uint64, why string) Event {
		return Event{Type: Withdrawn, Name: name, WaiterID: w, Reason: why}
	}
	released := Event{Type: Released, Name: "m", Reason: "released"}
	cases := []struct {
		name          string
		before, after qs
		evs           []Event
		bad           string // a fragment of the error; "" = fair
	}{
		{name: "hand-off to the head", before: qs{"m": {5, 7}}, evs: []Event{released, granted("m", 5)}, after: qs{"m": {7}}},
		{name: "barging past the head (capacity 1)", before: qs{"m": {5, 7}}, evs: []Event{released, granted("m", 7)}, after: qs{"m": {5}}, bad: "barging"},
		{name: "head withdrawn, next granted", before: qs{"m": {5, 7}}, evs: []Event{withdrawn("m", 5, "withdrawn"), granted("m", 7)}, after: qs{}},
		{name: "head's lease expired, next granted", before: qs{"m": {5, 7, 9}}, evs: []Event{withdrawn("m", 5, "expired"), released, granted("m", 7)}, after: qs{"m": {9}}},
		{name: "grant before the head leaves", before: qs{"m": {5, 7}}, evs: []Event{granted("m", 7), withdrawn("m", 5, "revoked")}, after: qs{}, bad: "barging"},
		{name: "new acquire to an empty queue", before: qs{}, evs: []Event{queued("m", 9), granted("m", 9)}, after: qs{}},
		{name: "try to an empty queue", before: qs{}, evs: []Event{granted("m", 9)}, after: qs{}},
		{name: "new acquire past a waiter", before: qs{"s": {5}}, evs: []Event{queued("s", 9), granted("s", 9)}, after: qs{"s": {5}}, bad: "barging"},
		{name: "try past a waiter", before: qs{"s": {5}}, evs: []Event{granted("s", 9)}, after: qs{"s": {5}}, bad: "barging: new acquire"},
		{name: "shared batch", before: qs{"s": {5, 6, 8}}, evs: []Event{released, granted("s", 5), granted("s", 6)}, after: qs{"s": {8}}},
		{name: "shared batch out of order", before: qs{"s": {5, 6}}, evs: []Event{released, granted("s", 6), granted("s", 5)}, after: qs{}, bad: "barging"},
		{name: "new shared acquire after a batch", before: qs{"s": {5, 6}}, evs: []Event{queued("s", 9), granted("s", 5), granted("s", 6), granted("s", 9)}, after: qs{}},
		{name: "new shared acquire inside a batch", before: qs{"s": {5, 6}}, evs: []Event{granted("s", 5), granted("s", 9), granted("s", 6)}, after: qs{}, bad: "barging: new acquire"},
		{name: "multi-lock at the head of both", before: qs{"a": {5}, "b": {5, 7}}, evs: []Event{granted("a", 5), granted("b", 5)}, after: qs{"b": {7}}},
		{name: "multi-lock not at the head of one", before: qs{"a": {5}, "b": {3, 5}}, evs: []Event{granted("a", 5), granted("b", 5)}, after: qs{"b": {3}}, bad: "barging"},
		{name: "multi-lock granted one lock of two", before: qs{"a": {5}, "b": {5}}, evs: []Event{granted("a", 5)}, after: qs{"b": {5}}, bad: "still waits"},
		{name: "multi-lock granted a lock it did not wait for", before: qs{"a": {5}}, evs: []Event{granted("a", 5), granted("b", 5)}, after: qs{}, bad: "not waiting"},
		{name: "waiter dropped silently", before: qs{"m": {5, 7}}, evs: nil, after: qs{"m": {7}}, bad: "events leave"},
		{name: "waiter reordered silently", before: qs{"m": {5, 7}}, evs: nil, after: qs{"m": {7, 5}}, bad: "events leave"},
		{name: "queued silently", before: qs{}, evs: nil, after: qs{"m": {9}}, bad: "events leave"},
		{name: "granted after its withdrawal", before: qs{"m": {5}}, evs: []Event{withdrawn("m", 5, "withdrawn"), granted("m", 5)}, after: qs{}, bad: "after it was withdrawn"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := checkFairGrants(tc.before, tc.evs, tc.after)
			switch {
			case tc.bad == "" && err != nil:
				t.Fatalf("a fair transition rejected: %v", err)
			case tc.bad != "" && err == nil:
				t.Fatalf("an unfair transition accepted")
			case tc.bad != "" && !strings.Contains(err.Error(), tc.bad):
				t.Fatalf("error %q does not mention %q", err, tc.bad)
			}
		})
	}
}

// The checker accepts what a real table does in the orders that matter:
// a mutex's hand-off, a shared batch behind a writer, a multi-lock waiter,
// the end of a lease with waiters and grants.
func TestCheckFairGrantsOnTable(t *testing.T) {
	h := newHarness(t)
	step := func(what string, f func()) {
		t.Helper()
		before, n := queuesOf(h.tab), len(h.events)
		f()
		if err := checkFairGrants(before, h.events[n:], queuesOf(h.tab)); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	a, b, c, d := h.lease(), h.lease(), h.lease(), h.lease()
	var tok uint64
	step("a holds m", func() { tok = h.hold(a, "m") })
	step("b queues for m", func() { h.queue(b, "m") })
	step("c queues for m and n", func() { h.queue(c, "m", "n") })
	step("d waits for the free n behind c", func() { h.queue(d, "n") })
	step("a releases m to b", func() { h.release(a, "m", tok) })
	if got := h.holders("m"); len(got) != 1 || got[0] != b {
		t.Fatalf("m held by %v, want b", got)
	}
	step("b's lease ends: c gets m and n", func() { h.ok(h.apply(cmdRevoke(b))) })
	if got := h.holders("n"); len(got) != 1 || got[0] != c {
		t.Fatalf("n held by %v, want c", got)
	}
	// A read-write lock: a writer holds it; readers 1 and 2, writer 2 and
	// reader 3 queue; the writer's release grants readers 1 and 2 together.
	w, r1, r2, w2, r3 := h.lease(), h.lease(), h.lease(), h.lease(), h.lease()
	acq := func(lease uint64, mode Mode) *Result {
		return h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: lease, Names: []string{"rw"}, Capacity: 3, Mode: int32(mode)})))
	}
	var wt uint64
	step("writer holds rw", func() { wt = acq(w, ModeExclusive).Tokens[0] })
	step("reader 1 queues", func() { acq(r1, ModeShared) })
	step("reader 2 queues", func() { acq(r2, ModeShared) })
	step("writer 2 queues", func() { acq(w2, ModeExclusive) })
	step("reader 3 queues behind writer 2", func() { acq(r3, ModeShared) })
	step("the writer's release grants readers 1 and 2", func() { h.release(w, "rw", wt) })
	if got := h.holders("rw"); len(got) != 2 || got[0] != r1 || got[1] != r2 {
		t.Fatalf("rw held by %v, want readers 1 and 2", got)
	}
	if got := h.waiters("rw"); len(got) != 2 {
		t.Fatalf("rw waiters %v, want writer 2 and reader 3", got)
	}
}
