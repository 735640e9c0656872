package locks

import (
	"reflect"
	"testing"
	"time"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
)

func TestEventsHandoff(t *testing.T) {
	h := newHarness(t)
	a, b := h.lease(), h.lease()
	res := h.ok(h.apply(cmdAcq(a, "x")))
	ta, wa := res.Tokens[0], res.WaiterID
	// An acquire queues (at its waiter id) and is granted in the same step.
	want := []Event{
		{Type: Queued, Revision: wa, Name: "x", LeaseID: a, WaiterID: wa},
		{Type: Granted, Revision: ta, Name: "x", LeaseID: a, Token: ta, WaiterID: wa},
	}
	if !reflect.DeepEqual(h.last, want) || ta != wa+1 {
		t.Fatalf("grant at once: events %+v, want %+v", h.last, want)
	}
	wb := h.queue(b, "x")
	want = []Event{{Type: Queued, Revision: wb, Name: "x", LeaseID: b, WaiterID: wb}}
	if !reflect.DeepEqual(h.last, want) {
		t.Fatalf("queue: events %+v, want %+v", h.last, want)
	}
	rel := h.release(a, "x", ta)
	want = []Event{
		{Type: Released, Revision: rel.Revision - 1, Name: "x", LeaseID: a, Token: ta, Reason: "released"},
		{Type: Granted, Revision: rel.Revision, Name: "x", LeaseID: b, Token: rel.Revision, WaiterID: wb},
	}
	if !reflect.DeepEqual(h.last, want) {
		t.Fatalf("handoff: events %+v, want %+v", h.last, want)
	}
}

func TestEventRevisionsIncrease(t *testing.T) {
	h := newHarness(t)
	a, b, c := h.lease(), h.lease(), h.lease()
	cmds := []*statev1.Command{
		cmdAcq(a, "x", "y"),
		cmdAcq(b, "x"),
		cmdAcq(c, "y", "x"),
		cmdAcquire(&statev1.Acquire{LeaseId: b, Names: []string{"z"}, LockDelayMs: 100}),
		cmdAcq(c, "z"),
		cmdRelease(a, "x", 0),
		cmdRelease(a, "y", 0),
		cmdSetValue(b, "x", 0, "v"),
		cmdExpire(b, 1),
		cmdForce("y", 0, "admin"),
	}
	for _, cmd := range cmds {
		before := h.tab.Revision()
		n := len(h.events)
		res := h.ok(h.apply(cmd))
		evs := h.events[n:]
		if len(evs) == 0 {
			t.Fatalf("%v emitted no events", cmd)
		}
		prev := before
		for _, e := range evs {
			if e.Revision < prev || e.Revision <= before || e.Revision > res.Revision {
				t.Fatalf("%v: event %+v out of order (before %d, result %d)", cmd, e, before, res.Revision)
			}
			prev = e.Revision
		}
		if res.Revision != h.tab.Revision() {
			t.Fatalf("%v: result revision %d, table %d", cmd, res.Revision, h.tab.Revision())
		}
	}
	// A delay started by the expiry above is announced with what the
	// leader needs to end it.
	d := eventsOf(h.events, Delayed)
	if len(d) != 1 || d[0].Name != "z" || d[0].Delay != 100*time.Millisecond || d[0].DelayRevision == 0 {
		t.Fatalf("delayed events %+v", d)
	}
	h.ok(h.apply(cmdEndDelay("z", d[0].DelayRevision)))
	if kinds := []EventType{h.last[0].Type, h.last[1].Type}; kinds[0] != DelayEnded || kinds[1] != Granted {
		t.Fatalf("events %+v", h.last)
	}
}

func TestNoEventsWithoutChange(t *testing.T) {
	h := newHarness(t)
	a := h.lease()
	h.hold(a, "x")
	h.unchanged("no-ops", func() {
		h.fails(h.apply(cmdRelease(a, "y", 0)), NotHolder)
		h.ok(h.apply(cmdAcq(a, "x")))            // reentrant
		h.ok(h.apply(cmdCancel(a, 12345)))       // nothing to cancel
		h.ok(h.apply(cmdEndDelay("x", 1)))       // no delay
		h.ok(h.apply(cmdExpire(a, h.term-1)))    // stale
		h.raw(nil)                               // empty entry
		h.fails(h.apply(cmdGrantMs(0)), Invalid) // bad
	})
}

func TestObserver(t *testing.T) {
	tab := NewTable()
	var got [][]Event
	tab.Observe(func(evs []Event) {
		// The callback runs after the table's lock is released: it may
		// read the table.
		if rev := tab.Revision(); rev != evs[len(evs)-1].Revision {
			t.Errorf("observer sees revision %d, the events end at %d", rev, evs[len(evs)-1].Revision)
		}
		got = append(got, evs)
	})
	tab.Apply(1, 1, encode(cmdGrant(time.Second, "")))
	tab.Apply(2, 1, encode(cmdAcq(1, "x")))
	tab.Apply(3, 1, encode(cmdGrantMs(-1))) // fails: no call
	if len(got) != 2 || got[0][0].Type != LeaseGranted || got[1][len(got[1])-1].Type != Granted {
		t.Fatalf("observed %+v", got)
	}
	// A restored table keeps its observer.
	snap, err := tab.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := tab.Restore(snap); err != nil {
		t.Fatal(err)
	}
	// The restore itself is announced, so observers know the events between
	// the old state and the new one are missing.
	if len(got) != 3 || got[2][0].Type != Reset || got[2][0].Revision != tab.Revision() {
		t.Fatalf("observed at restore %+v", got)
	}
	got = got[:2]
	tab.Apply(4, 1, encode(cmdRelease(1, "x", 0)))
	if len(got) != 3 || got[2][0].Type != Released {
		t.Fatalf("observed after restore %+v", got)
	}
	// A new observer replaces the old one; nil stops observing.
	var other int
	tab.Observe(func([]Event) { other++ })
	tab.Apply(5, 1, encode(cmdAcq(1, "x")))
	tab.Observe(nil)
	tab.Apply(6, 1, encode(cmdRelease(1, "x", 0)))
	if len(got) != 3 || other != 1 {
		t.Fatalf("observers called %d and %d times", len(got), other)
	}
}
