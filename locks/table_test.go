package locks

import (
	"bytes"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	"google.golang.org/protobuf/proto"
)

func TestEmptyEntryReturnsNil(t *testing.T) {
	tab := NewTable()
	if r := tab.Apply(1, 1, nil); r != nil {
		t.Fatalf("Apply(empty) = %#v, want nil", r)
	}
	if r := tab.Apply(2, 1, []byte{}); r != nil {
		t.Fatalf("Apply([]byte{}) = %#v, want nil", r)
	}
	if tab.Revision() != 0 {
		t.Fatalf("revision %d after empty entries", tab.Revision())
	}
}

func TestLeaseGrant(t *testing.T) {
	h := newHarness(t)
	res := h.ok(h.apply(cmdGrant(7*time.Second, "svc-a")))
	if res.LeaseID != 1 || res.Revision != 1 {
		t.Fatalf("first grant: %+v, want lease 1 at revision 1", res)
	}
	want := []Event{{Type: LeaseGranted, Revision: 1, LeaseID: 1, TTL: 7 * time.Second}}
	if !reflect.DeepEqual(h.last, want) {
		t.Fatalf("events %+v, want %+v", h.last, want)
	}
	res2 := h.ok(h.apply(cmdGrant(time.Millisecond, "")))
	if res2.LeaseID != 2 || res2.Revision != 2 {
		t.Fatalf("second grant: %+v", res2)
	}
	info, ok := h.tab.Lease(1)
	if !ok || info.TTL != 7*time.Second || info.Owner != "svc-a" || info.GrantedRev != 1 || info.Held != nil || info.Waiting != nil {
		t.Fatalf("Lease(1) = %+v, %v", info, ok)
	}
	// The largest TTL and owner are accepted.
	h.ok(h.apply(cmdGrant(MaxTTL, strings.Repeat("o", MaxOwnerBytes))))
	ttls := h.tab.LeaseTTLs()
	slices.SortFunc(ttls, func(a, b LeaseTTL) int { return int(a.ID) - int(b.ID) })
	if !reflect.DeepEqual(ttls, []LeaseTTL{{1, 7 * time.Second}, {2, time.Millisecond}, {3, MaxTTL}}) {
		t.Fatalf("LeaseTTLs = %v", ttls)
	}
	if s := h.tab.Stats(); s.Leases != 3 || s.Revision != 3 {
		t.Fatalf("Stats = %+v", s)
	}
}

func TestLeaseRevoke(t *testing.T) {
	h := newHarness(t)
	a, b, c := h.lease(), h.lease(), h.lease()
	// a holds x (with a lock-delay, which a revoke must not start) and y;
	// it waits for z behind c. b waits for x.
	h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: a, Names: []string{"x"}, LockDelayMs: 5000})))
	h.hold(a, "y")
	h.hold(c, "z")
	wz := h.queue(a, "z")
	wx := h.queue(b, "x")

	res := h.ok(h.apply(cmdRevoke(a)))
	if res.LeaseID != a {
		t.Fatalf("revoke result %+v", res)
	}
	if _, ok := h.tab.Lease(a); ok {
		t.Fatal("revoked lease still exists")
	}
	if got := h.holders("x"); !reflect.DeepEqual(got, []uint64{b}) {
		t.Fatalf("x held by %v after revoke, want the waiter's lease %d (no delay on revoke)", got, b)
	}
	if _, _, ok := h.tab.Describe("y"); ok {
		t.Fatal("y still exists after its only holder's lease was revoked")
	}
	if got := h.waiters("z"); got != nil {
		t.Fatalf("z waiters %v after revoke", got)
	}
	if w := eventsOf(h.last, Withdrawn); len(w) != 1 || w[0].WaiterID != wz || w[0].Reason != "revoked" || w[0].LeaseID != a {
		t.Fatalf("withdrawn events %+v", w)
	}
	rel := eventsOf(h.last, Released)
	if len(rel) != 2 || rel[0].Name != "x" || rel[1].Name != "y" || rel[0].Reason != "revoked" {
		t.Fatalf("released events %+v", rel)
	}
	if g := eventsOf(h.last, Granted); len(g) != 1 || g[0].WaiterID != wx || g[0].LeaseID != b {
		t.Fatalf("granted events %+v", g)
	}
	if e := eventsOf(h.last, LeaseEnded); len(e) != 1 || e[0].Reason != "revoked" {
		t.Fatalf("lease-ended events %+v", e)
	}
	if d := eventsOf(h.last, Delayed); d != nil {
		t.Fatalf("a revoke started a delay: %+v", d)
	}
	h.unchanged("second revoke", func() { h.fails(h.apply(cmdRevoke(a)), NotFound) })
	// Commands of the ended lease fail.
	h.unchanged("acquire by revoked lease", func() { h.fails(h.apply(cmdAcq(a, "q")), NotFound) })
}

func TestMutexFIFOHandoff(t *testing.T) {
	h := newHarness(t)
	ls := []uint64{h.lease(), h.lease(), h.lease(), h.lease()}
	tok := h.hold(ls[0], "m")
	var ws []uint64
	for i, l := range ls[1:] {
		res := h.ok(h.apply(cmdAcq(l, "m")))
		if res.Granted || res.Position != uint32(i+1) || res.WaiterID != res.Revision || res.WaiterID != h.tab.Revision() {
			t.Fatalf("waiter %d: %+v", i, res)
		}
		ws = append(ws, res.WaiterID)
	}
	if got := h.waiters("m"); !reflect.DeepEqual(got, ws) {
		t.Fatalf("queue %v, want %v", got, ws)
	}
	for i, l := range ls[1:] {
		prev := ls[i]
		res := h.release(prev, "m", tok)
		if got := h.holders("m"); !reflect.DeepEqual(got, []uint64{l}) {
			t.Fatalf("after release %d: holders %v, want %d", i, got, l)
		}
		newTok := h.tokenOf(l, "m")
		if newTok <= tok || newTok != res.Revision {
			t.Fatalf("handoff %d: token %d after %d, result revision %d", i, newTok, tok, res.Revision)
		}
		tok = newTok
		if got := h.waiters("m"); !reflect.DeepEqual(got, ws[i+1:]) && !(len(got) == 0 && len(ws[i+1:]) == 0) {
			t.Fatalf("queue %v, want %v", got, ws[i+1:])
		}
	}
	h.release(ls[3], "m", tok)
	if _, _, ok := h.tab.Describe("m"); ok {
		t.Fatal("free lock without waiters still exists")
	}
}

func TestTokensAreGrantRevisionsAndIncrease(t *testing.T) {
	h := newHarness(t)
	a, b := h.lease(), h.lease()
	var last uint64
	for i := range 10 {
		l := a
		if i%2 == 1 {
			l = b
		}
		// Unrelated traffic between grants.
		h.hold(l, "other/"+string(rune('a'+i)))
		res := h.ok(h.apply(cmdAcq(l, "t")))
		if !res.Granted || len(res.Tokens) != 1 {
			t.Fatalf("grant %d: %+v", i, res)
		}
		tok := res.Tokens[0]
		if tok != res.Revision || tok != h.tab.Revision() {
			t.Fatalf("grant %d: token %d, result revision %d, table revision %d", i, tok, res.Revision, h.tab.Revision())
		}
		if tok <= last {
			t.Fatalf("grant %d: token %d not above %d", i, tok, last)
		}
		last = tok
		if v, _ := h.tab.CheckFence("t", tok); !v {
			t.Fatalf("token %d not valid while held", tok)
		}
		h.release(l, "t", tok)
		if v, _ := h.tab.CheckFence("t", tok); v {
			t.Fatalf("token %d still valid after release", tok)
		}
	}
}

func TestReentrancy(t *testing.T) {
	h := newHarness(t)
	a, b := h.lease(), h.lease()
	tok := h.hold(a, "r")
	wb := h.queue(b, "r")
	for range 3 {
		h.unchanged("reentrant acquire", func() {
			res := h.ok(h.apply(cmdAcq(a, "r")))
			if !res.Granted || !reflect.DeepEqual(res.Tokens, []uint64{tok}) || res.Revision != h.tab.Revision() {
				t.Fatalf("reentrant acquire: %+v, want token %d", res, tok)
			}
		})
	}
	// A try and another mode also get the existing grant back.
	h.unchanged("reentrant try", func() {
		res := h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: a, Names: []string{"r"}, Try: true, Mode: int32(ModeShared)})))
		if !res.Granted || res.Tokens[0] != tok {
			t.Fatalf("reentrant try: %+v", res)
		}
	})
	// No hold count: one release frees it for the waiter.
	h.release(a, "r", tok)
	if got := h.holders("r"); !reflect.DeepEqual(got, []uint64{b}) {
		t.Fatalf("after one release holders %v, want [%d]", got, b)
	}
	if g := eventsOf(h.last, Granted); len(g) != 1 || g[0].WaiterID != wb {
		t.Fatalf("granted %+v", g)
	}
	h.unchanged("second release", func() { h.fails(h.apply(cmdRelease(a, "r", tok)), NotHolder) })

	// Multi-lock reentrancy returns the tokens in the order named.
	c := h.lease()
	t1 := h.hold(c, "m1")
	t2 := h.hold(c, "m2")
	h.unchanged("reentrant multi-lock", func() {
		res := h.ok(h.apply(cmdAcq(c, "m2", "m1")))
		if !res.Granted || !reflect.DeepEqual(res.Tokens, []uint64{t2, t1}) {
			t.Fatalf("reentrant multi-lock: %+v, want tokens [%d %d]", res, t2, t1)
		}
	})
	// Holding some but not all of the names is a conflict.
	h.unchanged("partly held", func() { h.fails(h.apply(cmdAcq(c, "m1", "m3")), Conflict) })
}

func TestReacquireWhileWaitingReturnsTheWaiter(t *testing.T) {
	h := newHarness(t)
	a, b := h.lease(), h.lease()
	h.hold(a, "x")
	h.hold(a, "y")
	w := h.queue(b, "x", "y")
	h.unchanged("re-acquire while waiting", func() {
		for range 3 {
			res := h.ok(h.apply(cmdAcq(b, "x", "y")))
			if res.Granted || res.WaiterID != w || res.Position != 1 {
				t.Fatalf("re-acquire: %+v, want waiter %d at 1", res, w)
			}
		}
		// A try that finds its own waiter returns it too; it does not queue again.
		res := h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: b, Names: []string{"x", "y"}, Try: true})))
		if res.Granted || res.WaiterID != w {
			t.Fatalf("re-acquire as try: %+v", res)
		}
	})
	if got := h.waiters("x"); !reflect.DeepEqual(got, []uint64{w}) {
		t.Fatalf("queue of x %v, want one waiter %d", got, w)
	}
	// Waiting for one of the locks in another request is a conflict.
	h.unchanged("overlapping wait", func() {
		h.fails(h.apply(cmdAcq(b, "x")), Conflict)
		h.fails(h.apply(cmdAcq(b, "y", "z")), Conflict)
	})
	// A disjoint request is a waiter of its own.
	h.hold(a, "z")
	w2 := h.queue(b, "z")
	if w2 == w {
		t.Fatal("disjoint request reused the waiter")
	}
}

func TestRequestIDDedup(t *testing.T) {
	type setup struct {
		h          *harness
		a, b       uint64
		tokA, tokB uint64
	}
	prepare := func(t *testing.T) *setup {
		h := newHarness(t)
		s := &setup{h: h, a: h.lease(), b: h.lease()}
		s.tokA = h.hold(s.a, "held")
		s.tokB = h.hold(s.b, "bheld")
		return s
	}
	const req = 42
	cases := []struct {
		name  string
		cmd   func(s *setup) *statev1.Command
		check func(t *testing.T, s *setup, first *Result)
	}{
		{"acquire granted", func(s *setup) *statev1.Command {
			return cmdAcquire(&statev1.Acquire{LeaseId: s.a, Names: []string{"free"}, RequestId: req})
		}, func(t *testing.T, s *setup, r *Result) {
			if !r.Granted {
				t.Fatalf("%+v", r)
			}
		}},
		{"acquire queued", func(s *setup) *statev1.Command {
			return cmdAcquire(&statev1.Acquire{LeaseId: s.a, Names: []string{"bheld"}, RequestId: req})
		}, func(t *testing.T, s *setup, r *Result) {
			if r.Granted || r.WaiterID == 0 {
				t.Fatalf("%+v", r)
			}
		}},
		{"try not granted", func(s *setup) *statev1.Command {
			return cmdAcquire(&statev1.Acquire{LeaseId: s.a, Names: []string{"bheld"}, RequestId: req, Try: true})
		}, func(t *testing.T, s *setup, r *Result) {
			if r.Granted || r.WaiterID != 0 {
				t.Fatalf("%+v", r)
			}
		}},
		{"release", func(s *setup) *statev1.Command {
			return cmdReleaseReq(s.a, "held", s.tokA, req)
		}, nil},
		{"set value", func(s *setup) *statev1.Command {
			c := cmdSetValue(s.a, "held", s.tokA, "v1")
			c.GetSetValue().RequestId = req
			return c
		}, nil},
		{"error: release by non-holder", func(s *setup) *statev1.Command {
			return cmdReleaseReq(s.a, "bheld", 0, req)
		}, func(t *testing.T, s *setup, r *Result) {
			if r.Err == nil || r.Err.Code != NotHolder {
				t.Fatalf("%+v", r)
			}
		}},
		{"error: bad name", func(s *setup) *statev1.Command {
			return cmdAcquire(&statev1.Acquire{LeaseId: s.a, Names: []string{"a//b"}, RequestId: req})
		}, func(t *testing.T, s *setup, r *Result) {
			if r.Err == nil || r.Err.Code != Invalid {
				t.Fatalf("%+v", r)
			}
		}},
		{"error: capacity conflict", func(s *setup) *statev1.Command {
			return cmdAcquire(&statev1.Acquire{LeaseId: s.a, Names: []string{"bheld"}, Capacity: 2, RequestId: req})
		}, func(t *testing.T, s *setup, r *Result) {
			if r.Err == nil || r.Err.Code != Conflict {
				t.Fatalf("%+v", r)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := prepare(t)
			h := s.h
			cmd := tc.cmd(s)
			first := h.apply(cmd)
			if first.Duplicate {
				t.Fatal("first application marked duplicate")
			}
			if tc.check != nil {
				tc.check(t, s, first)
			}
			for range 3 {
				h.unchanged("retry", func() {
					again := h.apply(cmd)
					if !again.Duplicate {
						t.Fatalf("retry not marked duplicate: %+v", again)
					}
					again.Duplicate = false
					if !reflect.DeepEqual(again, first) {
						t.Fatalf("retry returned %+v, first result was %+v", again, first)
					}
				})
			}
			// The same request id of another lease is another request.
			other := cmdAcquire(&statev1.Acquire{LeaseId: s.b, Names: []string{"zz"}, RequestId: req})
			if r := h.ok(h.apply(other)); r.Duplicate || !r.Granted {
				t.Fatalf("another lease's request with the same id: %+v", r)
			}
		})
	}

	t.Run("retry after the state moved on changes nothing", func(t *testing.T) {
		s := prepare(t)
		h := s.h
		rel := cmdReleaseReq(s.a, "held", s.tokA, 7)
		first := h.ok(h.apply(rel))
		tok := h.hold(s.a, "held") // held again, with a new token
		h.unchanged("late retry", func() {
			again := h.apply(rel)
			if !again.Duplicate || again.Err != nil || again.Revision != first.Revision {
				t.Fatalf("late retry: %+v, first %+v", again, first)
			}
		})
		if got := h.tokenOf(s.a, "held"); got != tok {
			t.Fatalf("late retry released the new grant: token %d, want %d", got, tok)
		}
	})

	t.Run("a failed request is remembered and changes no lock", func(t *testing.T) {
		s := prepare(t)
		h := s.h
		before, rev := lockState(t, h.snap()), h.tab.Revision()
		r := h.apply(cmdAcquire(&statev1.Acquire{LeaseId: s.a, Names: []string{""}, RequestId: 9}))
		h.fails(r, Invalid)
		if !bytes.Equal(before, lockState(t, h.snap())) || h.tab.Revision() != rev || len(h.last) != 0 {
			t.Fatal("a failed request with a request id changed the table beyond its de-duplication record")
		}
		// The retry gets the same error, even though it would now be valid
		// under another id: the request id names the request.
		again := h.apply(cmdAcquire(&statev1.Acquire{LeaseId: s.a, Names: []string{"fine"}, RequestId: 9}))
		if !again.Duplicate || again.Err == nil || again.Err.Code != Invalid {
			t.Fatalf("retry %+v", again)
		}
	})

	t.Run("the window is the last dedupPerLease requests", func(t *testing.T) {
		s := prepare(t)
		h := s.h
		first := h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: s.a, Names: []string{"w"}, RequestId: 1})))
		for i := range dedupPerLease - 1 {
			h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: s.a, Names: []string{"w"}, RequestId: uint64(100 + i)})))
		}
		if r := h.apply(cmdAcquire(&statev1.Acquire{LeaseId: s.a, Names: []string{"w"}, RequestId: 1})); !r.Duplicate || r.Revision != first.Revision {
			t.Fatalf("request 1 forgotten too early: %+v", r)
		}
		h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: s.a, Names: []string{"w"}, RequestId: 1000})))
		if r := h.apply(cmdAcquire(&statev1.Acquire{LeaseId: s.a, Names: []string{"w"}, RequestId: 1})); r.Duplicate {
			t.Fatalf("request 1 still remembered after %d newer ones: %+v", dedupPerLease, r)
		}
	})

	t.Run("request id zero is never de-duplicated", func(t *testing.T) {
		s := prepare(t)
		h := s.h
		h.release(s.a, "held", 0)
		h.fails(h.apply(cmdRelease(s.a, "held", 0)), NotHolder)
	})
}

func TestTryLock(t *testing.T) {
	cases := []struct {
		name    string
		prepare func(h *harness) (lease uint64) // returns the trying lease
		acquire *statev1.Acquire
		granted bool
	}{
		{"free", func(h *harness) uint64 { return h.lease() },
			&statev1.Acquire{Names: []string{"x"}}, true},
		{"free multi-lock", func(h *harness) uint64 { return h.lease() },
			&statev1.Acquire{Names: []string{"x", "y", "z"}}, true},
		{"held", func(h *harness) uint64 { h.hold(h.lease(), "x"); return h.lease() },
			&statev1.Acquire{Names: []string{"x"}}, false},
		{"one of several held", func(h *harness) uint64 { h.hold(h.lease(), "y"); return h.lease() },
			&statev1.Acquire{Names: []string{"x", "y"}}, false},
		{"semaphore with room", func(h *harness) uint64 {
			h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: h.lease(), Names: []string{"s"}, Capacity: 2})))
			return h.lease()
		}, &statev1.Acquire{Names: []string{"s"}, Capacity: 2}, true},
		{"semaphore full", func(h *harness) uint64 {
			for range 2 {
				h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: h.lease(), Names: []string{"s"}, Capacity: 2})))
			}
			return h.lease()
		}, &statev1.Acquire{Names: []string{"s"}, Capacity: 2}, false},
		{"shared with room behind an exclusive waiter", func(h *harness) uint64 {
			h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: h.lease(), Names: []string{"rw"}, Capacity: 5, Mode: int32(ModeShared)})))
			r := h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: h.lease(), Names: []string{"rw"}, Capacity: 5, Mode: int32(ModeExclusive)})))
			if r.Granted {
				h.t.Fatal("exclusive granted beside a shared holder")
			}
			return h.lease()
		}, &statev1.Acquire{Names: []string{"rw"}, Capacity: 5, Mode: int32(ModeShared)}, false},
		{"lock in a delay", func(h *harness) uint64 {
			a := h.lease()
			h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: a, Names: []string{"d"}, LockDelayMs: 1000})))
			h.ok(h.apply(cmdExpire(a, h.term)))
			return h.lease()
		}, &statev1.Acquire{Names: []string{"d"}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			l := tc.prepare(h)
			a := proto.Clone(tc.acquire).(*statev1.Acquire)
			a.LeaseId, a.Try = l, true
			if !tc.granted {
				h.unchanged("failed try", func() {
					res := h.ok(h.apply(cmdAcquire(a)))
					if res.Granted || res.WaiterID != 0 || res.Tokens != nil || res.Revision != h.tab.Revision() {
						t.Fatalf("try: %+v, want not granted and no waiter", res)
					}
				})
				if info, _ := h.tab.Lease(l); info.Waiting != nil {
					t.Fatalf("try left the lease waiting for %v", info.Waiting)
				}
				return
			}
			res := h.ok(h.apply(cmdAcquire(a)))
			if !res.Granted || len(res.Tokens) != len(a.Names) {
				t.Fatalf("try: %+v, want granted", res)
			}
			if q := eventsOf(h.last, Queued); q != nil {
				t.Fatalf("a try emitted queued events %+v", q)
			}
			for _, n := range a.Names {
				if !slices.Contains(h.holders(n), l) {
					t.Fatalf("%s not held by %d", n, l)
				}
			}
		})
	}
}

func TestSemaphore(t *testing.T) {
	h := newHarness(t)
	const capacity = 3
	acq := func(l uint64, mode Mode, c uint32) *Result {
		return h.apply(cmdAcquire(&statev1.Acquire{LeaseId: l, Names: []string{"sem"}, Capacity: c, Mode: int32(mode)}))
	}
	var ls []uint64
	for i := range capacity {
		l := h.lease()
		ls = append(ls, l)
		res := h.ok(acq(l, ModeDefault, capacity))
		if !res.Granted {
			t.Fatalf("slot %d not granted: %+v", i, res)
		}
	}
	info, _, _ := h.tab.Describe("sem")
	if info.Capacity != capacity || len(info.Holders) != capacity {
		t.Fatalf("describe %+v", info)
	}
	for _, hd := range info.Holders {
		if hd.Mode != ModeShared {
			t.Fatalf("default mode on a semaphore gave %v, want shared", hd.Mode)
		}
	}
	extra := h.lease()
	wExtra := h.ok(acq(extra, ModeDefault, capacity))
	if wExtra.Granted {
		t.Fatal("granted beyond capacity")
	}
	// Another capacity for a lock in use is a conflict, both while held
	// and for capacity 0 (which means 1).
	other := h.lease()
	h.unchanged("capacity conflict", func() {
		h.fails(acq(other, ModeDefault, 2), Conflict)
		h.fails(acq(other, ModeDefault, 0), Conflict)
		h.fails(h.apply(cmdAcq(other, "sem")), Conflict)
	})
	h.release(ls[0], "sem", 0)
	if got := h.holders("sem"); !slices.Contains(got, extra) || len(got) != capacity {
		t.Fatalf("holders %v after a slot freed, want %d in", got, extra)
	}
	// An exclusive waiter waits for every slot, then holds it alone.
	x := h.lease()
	wx := h.ok(acq(x, ModeExclusive, capacity))
	if wx.Granted {
		t.Fatal("exclusive granted among shared holders")
	}
	for _, l := range []uint64{ls[1], ls[2]} {
		h.release(l, "sem", 0)
		if slices.Contains(h.holders("sem"), x) {
			t.Fatal("exclusive granted beside shared holders")
		}
	}
	h.release(extra, "sem", 0)
	if got := h.holders("sem"); !reflect.DeepEqual(got, []uint64{x}) {
		t.Fatalf("holders %v, want the exclusive %d alone", got, x)
	}
	// Once unused, the lock is gone and a new capacity is accepted.
	h.release(x, "sem", 0)
	if _, _, ok := h.tab.Describe("sem"); ok {
		t.Fatal("unused semaphore still exists")
	}
	h.ok(acq(other, ModeDefault, 2))
	if info, _, _ := h.tab.Describe("sem"); info.Capacity != 2 {
		t.Fatalf("capacity %d, want 2", info.Capacity)
	}
	// Mode default on capacity 1 is exclusive.
	h.hold(other, "mutex")
	if info, _, _ := h.tab.Describe("mutex"); info.Holders[0].Mode != ModeExclusive || info.Capacity != 1 {
		t.Fatalf("mutex %+v", info)
	}
}

func TestReadWrite(t *testing.T) {
	h := newHarness(t)
	const capacity = 10
	acq := func(mode Mode) (uint64, *Result) {
		l := h.lease()
		return l, h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: l, Names: []string{"rw"}, Capacity: capacity, Mode: int32(mode)})))
	}
	s1, r1 := acq(ModeShared)
	s2, r2 := acq(ModeShared)
	if !r1.Granted || !r2.Granted {
		t.Fatal("readers not granted together")
	}
	x1, rx1 := acq(ModeExclusive)
	s3, rs3 := acq(ModeShared)
	s4, rs4 := acq(ModeShared)
	x2, rx2 := acq(ModeExclusive)
	s5, rs5 := acq(ModeShared)
	for _, r := range []*Result{rx1, rs3, rs4, rx2, rs5} {
		if r.Granted {
			t.Fatalf("granted past a waiting writer: %+v", r)
		}
	}
	// A reader arriving now does not barge past the waiting writer, even
	// with room.
	late := h.lease()
	h.unchanged("reader try behind writer", func() {
		r := h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: late, Names: []string{"rw"}, Capacity: capacity, Mode: int32(ModeShared), Try: true})))
		if r.Granted {
			t.Fatal("a reader's try barged past a waiting writer")
		}
	})
	h.release(s1, "rw", 0)
	if got := h.holders("rw"); !reflect.DeepEqual(got, []uint64{s2}) {
		t.Fatalf("holders %v", got)
	}
	h.release(s2, "rw", 0)
	if got := h.holders("rw"); !reflect.DeepEqual(got, []uint64{x1}) {
		t.Fatalf("holders %v, want writer %d alone", got, x1)
	}
	// The writer's release grants the two consecutive readers in one step.
	h.release(x1, "rw", 0)
	if got := h.holders("rw"); !reflect.DeepEqual(got, []uint64{s3, s4}) {
		t.Fatalf("holders %v, want readers %d and %d", got, s3, s4)
	}
	g := eventsOf(h.last, Granted)
	if len(g) != 2 || g[0].WaiterID != rs3.WaiterID || g[1].WaiterID != rs4.WaiterID {
		t.Fatalf("granted events %+v", g)
	}
	// s5 waits behind x2: no barging.
	if got := h.waiters("rw"); !reflect.DeepEqual(got, []uint64{rx2.WaiterID, rs5.WaiterID}) {
		t.Fatalf("queue %v", got)
	}
	h.release(s3, "rw", 0)
	h.release(s4, "rw", 0)
	if got := h.holders("rw"); !reflect.DeepEqual(got, []uint64{x2}) {
		t.Fatalf("holders %v, want %d", got, x2)
	}
	h.release(x2, "rw", 0)
	if got := h.holders("rw"); !reflect.DeepEqual(got, []uint64{s5}) {
		t.Fatalf("holders %v, want %d", got, s5)
	}
}

func TestSharedBatchStopsAtCapacity(t *testing.T) {
	h := newHarness(t)
	x := h.lease()
	h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: x, Names: []string{"s"}, Capacity: 2, Mode: int32(ModeExclusive)})))
	var rs []uint64
	for range 3 {
		l := h.lease()
		rs = append(rs, l)
		h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: l, Names: []string{"s"}, Capacity: 2, Mode: int32(ModeShared)})))
	}
	h.release(x, "s", 0)
	if got := h.holders("s"); !reflect.DeepEqual(got, rs[:2]) {
		t.Fatalf("holders %v, want the first two readers %v", got, rs[:2])
	}
	h.release(rs[0], "s", 0)
	if got := h.holders("s"); !reflect.DeepEqual(got, rs[1:]) {
		t.Fatalf("holders %v, want %v", got, rs[1:])
	}
}

func TestMultiLock(t *testing.T) {
	t.Run("all or nothing, one token", func(t *testing.T) {
		h := newHarness(t)
		a, b, c := h.lease(), h.lease(), h.lease()
		tb := h.hold(a, "b")
		res := h.ok(h.apply(cmdAcq(b, "a", "b")))
		if res.Granted {
			t.Fatal("multi-lock granted while one lock is held")
		}
		w := res.WaiterID
		// It waits in both queues and holds neither.
		if got := h.waiters("a"); !reflect.DeepEqual(got, []uint64{w}) {
			t.Fatalf("queue of a %v", got)
		}
		if got := h.waiters("b"); !reflect.DeepEqual(got, []uint64{w}) {
			t.Fatalf("queue of b %v", got)
		}
		if got := h.holders("a"); got != nil {
			t.Fatalf("a held by %v", got)
		}
		if q := eventsOf(h.last, Queued); len(q) != 2 {
			t.Fatalf("queued events %+v", q)
		}
		// c wants only a, which is free, but b's waiter came first.
		wc := h.queue(c, "a")
		h.release(a, "b", tb)
		if got := h.holders("a"); !reflect.DeepEqual(got, []uint64{b}) {
			t.Fatalf("a held by %v", got)
		}
		ta, tb2 := h.tokenOf(b, "a"), h.tokenOf(b, "b")
		if ta != tb2 || ta <= tb {
			t.Fatalf("tokens a=%d b=%d, want one new token", ta, tb2)
		}
		g := eventsOf(h.last, Granted)
		if len(g) != 2 || g[0].Token != ta || g[1].Token != ta || g[0].WaiterID != w {
			t.Fatalf("granted events %+v", g)
		}
		h.release(b, "a", ta)
		if got := h.holders("a"); !reflect.DeepEqual(got, []uint64{c}) {
			t.Fatalf("a held by %v, want %d", got, c)
		}
		if g := eventsOf(h.last, Granted); len(g) != 1 || g[0].WaiterID != wc {
			t.Fatalf("granted %+v", g)
		}
	})
	t.Run("no deadlock between opposite orders", func(t *testing.T) {
		h := newHarness(t)
		a, d, p, q := h.lease(), h.lease(), h.lease(), h.lease()
		h.hold(a, "k1")
		h.hold(d, "k2")
		wp := h.queue(p, "k1", "k2")
		wq := h.queue(q, "k2", "k1")
		h.release(a, "k1", 0)
		if h.holders("k1") != nil {
			t.Fatal("k1 granted to a waiter that cannot get k2")
		}
		h.release(d, "k2", 0)
		if got := h.holders("k1"); !reflect.DeepEqual(got, []uint64{p}) || !reflect.DeepEqual(h.holders("k2"), []uint64{p}) {
			t.Fatalf("k1 %v k2 %v, want both for %d", got, h.holders("k2"), p)
		}
		if got := h.waiters("k2"); !reflect.DeepEqual(got, []uint64{wq}) {
			t.Fatalf("k2 queue %v", got)
		}
		_ = wp
		h.release(p, "k2", 0)
		if h.holders("k2") != nil {
			t.Fatal("k2 granted to a waiter that cannot get k1")
		}
		h.release(p, "k1", 0)
		if !reflect.DeepEqual(h.holders("k1"), []uint64{q}) || !reflect.DeepEqual(h.holders("k2"), []uint64{q}) {
			t.Fatal("second multi-lock waiter not granted")
		}
		res := h.ok(h.apply(cmdAcq(q, "k2", "k1")))
		if !res.Granted || res.Tokens[0] != res.Tokens[1] {
			t.Fatalf("%+v", res)
		}
	})
	t.Run("chain of grants across locks", func(t *testing.T) {
		// Freeing one lock lets a waiter in that frees nothing, yet a
		// multi-lock waiter behind it elsewhere must still be woken when
		// its last lock frees.
		h := newHarness(t)
		a, b, c := h.lease(), h.lease(), h.lease()
		h.hold(a, "p")
		h.hold(a, "q")
		wb := h.queue(b, "p", "q")
		wc := h.queue(c, "q")
		h.ok(h.apply(cmdRevoke(a)))
		if !reflect.DeepEqual(h.holders("p"), []uint64{b}) || !reflect.DeepEqual(h.holders("q"), []uint64{b}) {
			t.Fatal("b not granted both")
		}
		h.ok(h.apply(cmdCancel(b, wb))) // gives both back
		if !reflect.DeepEqual(h.holders("q"), []uint64{c}) {
			t.Fatalf("q held by %v, want %d (waiter %d)", h.holders("q"), c, wc)
		}
	})
}

func TestCancel(t *testing.T) {
	t.Run("queued waiter", func(t *testing.T) {
		h := newHarness(t)
		a, b, c := h.lease(), h.lease(), h.lease()
		h.hold(a, "x")
		wb := h.queue(b, "x")
		wc := h.queue(c, "x")
		res := h.ok(h.apply(cmdCancel(b, wb)))
		if res.Count != 1 || res.Revision != h.tab.Revision() {
			t.Fatalf("cancel %+v", res)
		}
		if w := eventsOf(h.last, Withdrawn); len(w) != 1 || w[0].WaiterID != wb || w[0].Reason != "withdrawn" {
			t.Fatalf("withdrawn %+v", w)
		}
		if got := h.waiters("x"); !reflect.DeepEqual(got, []uint64{wc}) {
			t.Fatalf("queue %v", got)
		}
		h.unchanged("cancel again", func() {
			if r := h.ok(h.apply(cmdCancel(b, wb))); r.Count != 0 {
				t.Fatalf("%+v", r)
			}
		})
		h.unchanged("cancel of another lease's waiter", func() {
			if r := h.ok(h.apply(cmdCancel(b, wc))); r.Count != 0 {
				t.Fatalf("%+v", r)
			}
		})
		h.unchanged("cancel by unknown lease", func() { h.fails(h.apply(cmdCancel(999, wc)), NotFound) })
		h.release(a, "x", 0)
		if got := h.holders("x"); !reflect.DeepEqual(got, []uint64{c}) {
			t.Fatalf("holders %v", got)
		}
	})
	t.Run("withdrawing the head lets the next in", func(t *testing.T) {
		h := newHarness(t)
		a, b, c := h.lease(), h.lease(), h.lease()
		h.hold(a, "x")
		wb := h.queue(b, "x", "y") // first in y's queue, but x is held
		h.queue(c, "y")            // y is free, but b came first
		h.ok(h.apply(cmdCancel(b, wb)))
		if got := h.holders("y"); !reflect.DeepEqual(got, []uint64{c}) {
			t.Fatalf("y held by %v after the head withdrew, want %d", got, c)
		}
	})
	t.Run("after the grant won the race", func(t *testing.T) {
		h := newHarness(t)
		a, b, c := h.lease(), h.lease(), h.lease()
		// b holds r from an earlier acquire, and re-acquires it
		// (reentrant: no waiter).
		tr := h.hold(b, "r")
		re := h.ok(h.apply(cmdAcq(b, "r")))
		if !re.Granted || re.WaiterID != 0 {
			t.Fatalf("reentrant acquire %+v", re)
		}
		h.hold(a, "x", "y")
		wb := h.queue(b, "x", "y")
		wc := h.queue(c, "x")
		h.release(a, "x", 0)
		h.release(a, "y", 0) // b is granted x and y
		tb := h.tokenOf(b, "x")
		// b's caller gave up before it heard of the grant.
		res := h.ok(h.apply(cmdCancel(b, wb)))
		if res.Count != 2 {
			t.Fatalf("cancel after grant: %+v, want 2 grants released", res)
		}
		rel := eventsOf(h.last, Released)
		if len(rel) != 2 || rel[0].Reason != "withdrawn" || rel[0].Token != tb {
			t.Fatalf("released %+v", rel)
		}
		if v, _ := h.tab.CheckFence("x", tb); v {
			t.Fatal("withdrawn grant's token still valid")
		}
		// The earlier grant of r stays, and the next waiter of x is in.
		if got := h.tokenOf(b, "r"); got != tr {
			t.Fatalf("token of r %d, want %d", got, tr)
		}
		if got := h.holders("x"); !reflect.DeepEqual(got, []uint64{c}) {
			t.Fatalf("x held by %v, want %d (waiter %d)", got, c, wc)
		}
		// Cancelling the reentrant acquire (it had no waiter) or the old
		// waiter again releases nothing.
		h.unchanged("cancel of nothing", func() {
			for _, w := range []uint64{0, wb, tr} {
				if r := h.ok(h.apply(cmdCancel(b, w))); r.Count != 0 {
					t.Fatalf("cancel %d: %+v", w, r)
				}
			}
		})
		if got := h.tokenOf(b, "r"); got != tr {
			t.Fatalf("token of r %d, want %d", got, tr)
		}
	})
	t.Run("releases exactly that grant, not an earlier grant of the same lock", func(t *testing.T) {
		h := newHarness(t)
		b := h.lease()
		w1 := h.ok(h.apply(cmdAcq(b, "r"))).WaiterID
		tok1 := h.tokenOf(b, "r")
		h.release(b, "r", tok1)
		w2 := h.ok(h.apply(cmdAcq(b, "r"))).WaiterID
		tok2 := h.tokenOf(b, "r")
		if w1 == 0 || w2 == 0 || w1 == w2 {
			t.Fatalf("waiters %d %d", w1, w2)
		}
		h.unchanged("stale cancel", func() {
			if r := h.ok(h.apply(cmdCancel(b, w1))); r.Count != 0 {
				t.Fatalf("stale cancel released %d", r.Count)
			}
		})
		if r := h.ok(h.apply(cmdCancel(b, w2))); r.Count != 1 {
			t.Fatalf("%+v", r)
		}
		if v, _ := h.tab.CheckFence("r", tok2); v {
			t.Fatal("cancelled grant still valid")
		}
	})
}

func TestExpireLeaseTerm(t *testing.T) {
	h := newHarness(t)
	h.bumpTerm() // term 2
	a := h.lease()
	h.hold(a, "x")
	h.bumpTerm() // term 3
	h.unchanged("stale expiry", func() {
		res := h.ok(h.apply(cmdExpire(a, 2)))
		if !res.Ignored || res.Revision != h.tab.Revision() {
			t.Fatalf("stale expiry %+v, want ignored", res)
		}
		// An ignored expiry of an unknown lease is still just ignored.
		if r := h.ok(h.apply(cmdExpire(12345, 1))); !r.Ignored {
			t.Fatalf("%+v", r)
		}
	})
	h.unchanged("expiry of unknown lease", func() { h.fails(h.apply(cmdExpire(12345, 3)), NotFound) })
	res := h.ok(h.apply(cmdExpire(a, 3)))
	if res.Ignored || res.LeaseID != a {
		t.Fatalf("current-term expiry %+v", res)
	}
	if _, ok := h.tab.Lease(a); ok {
		t.Fatal("lease survived its expiry")
	}
	// An expiry carrying a newer term than the log's is applied too.
	b := h.lease()
	if r := h.ok(h.apply(cmdExpire(b, 9))); r.Ignored {
		t.Fatal("future-term expiry ignored")
	}
}

func TestExpiry(t *testing.T) {
	h := newHarness(t)
	a, b, c := h.lease(), h.lease(), h.lease()
	ta := h.hold(a, "x")
	h.hold(c, "y")
	wa := h.queue(a, "y")
	wb := h.queue(b, "x")
	h.ok(h.apply(cmdExpire(a, h.term)))
	if v, _ := h.tab.CheckFence("x", ta); v {
		t.Fatal("expired lease's token still valid")
	}
	if got := h.holders("x"); !reflect.DeepEqual(got, []uint64{b}) {
		t.Fatalf("x held by %v, want %d", got, b)
	}
	if got := h.waiters("y"); got != nil {
		t.Fatalf("y queue %v", got)
	}
	var kinds []EventType
	for _, e := range h.last {
		kinds = append(kinds, e.Type)
	}
	want := []EventType{Withdrawn, Released, LeaseEnded, Granted}
	if !reflect.DeepEqual(kinds, want) {
		t.Fatalf("events %v, want %v", kinds, want)
	}
	if h.last[0].WaiterID != wa || h.last[0].Reason != "expired" || h.last[1].Reason != "expired" || h.last[3].WaiterID != wb {
		t.Fatalf("events %+v", h.last)
	}
}

func TestLockDelay(t *testing.T) {
	const delay = 5 * time.Second
	cases := []struct {
		name    string
		end     func(h *harness, holder uint64, token uint64) *statev1.Command
		delayed bool
	}{
		{"release", func(h *harness, l, tok uint64) *statev1.Command { return cmdRelease(l, "d", tok) }, false},
		{"revoke", func(h *harness, l, tok uint64) *statev1.Command { return cmdRevoke(l) }, false},
		{"cancel after grant", func(h *harness, l, tok uint64) *statev1.Command {
			return cmdCancel(l, h.tab.locks["d"].holders[0].waiterID)
		}, false},
		{"expire", func(h *harness, l, tok uint64) *statev1.Command { return cmdExpire(l, h.term) }, true},
		{"force release", func(h *harness, l, tok uint64) *statev1.Command { return cmdForce("d", tok, "stuck") }, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			a, b := h.lease(), h.lease()
			res := h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: a, Names: []string{"d"}, LockDelayMs: delay.Milliseconds()})))
			tok := res.Tokens[0]
			wb := h.queue(b, "d")
			h.now = testNow + 12345
			end := h.ok(h.apply(tc.end(h, a, tok)))
			if !tc.delayed {
				if got := h.holders("d"); !reflect.DeepEqual(got, []uint64{b}) {
					t.Fatalf("after %s: holders %v, want %d at once", tc.name, got, b)
				}
				if d := eventsOf(h.last, Delayed); d != nil {
					t.Fatalf("%s started a delay %+v", tc.name, d)
				}
				return
			}
			if got := h.holders("d"); got != nil {
				t.Fatalf("granted %v during the delay", got)
			}
			info, _, ok := h.tab.Describe("d")
			if !ok || info.DelayedUntil != h.now+int64(delay) || info.DelayRevision != end.Revision || info.DelayReason == "" || info.Delay != delay {
				t.Fatalf("describe %+v, want delayed until %d at revision %d", info, h.now+int64(delay), end.Revision)
			}
			d := eventsOf(h.last, Delayed)
			if len(d) != 1 || d[0].Delay != delay || d[0].DelayRevision != end.Revision || d[0].Name != "d" {
				t.Fatalf("delayed events %+v", d)
			}
			if dl := h.tab.DelayedLocks(); !reflect.DeepEqual(dl, []DelayedLock{{Name: "d", Delay: delay, DelayRevision: end.Revision}}) {
				t.Fatalf("DelayedLocks %+v", dl)
			}
			// Nobody is granted during the delay: not a try, not a new waiter.
			c := h.lease()
			h.unchanged("try during delay", func() {
				if r := h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: c, Names: []string{"d"}, Try: true}))); r.Granted {
					t.Fatal("try granted during the delay")
				}
			})
			// A new waiter that asks for no delay does not shorten the
			// current one.
			wc := h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: c, Names: []string{"d"}}))).WaiterID
			if dl := h.tab.DelayedLocks(); len(dl) != 1 || dl[0].Delay != delay {
				t.Fatalf("DelayedLocks %+v after a waiter asked for no delay, want the running delay %v", dl, delay)
			}
			h.unchanged("end of another delay", func() {
				for _, rev := range []uint64{0, end.Revision - 1, end.Revision + 1} {
					if r := h.ok(h.apply(cmdEndDelay("d", rev))); !r.Ignored {
						t.Fatalf("EndDelay(%d): %+v, want ignored", rev, r)
					}
				}
				if r := h.ok(h.apply(cmdEndDelay("nosuch", end.Revision))); !r.Ignored {
					t.Fatalf("%+v", r)
				}
			})
			r := h.ok(h.apply(cmdEndDelay("d", end.Revision)))
			if r.Ignored {
				t.Fatal("EndDelay with the right revision ignored")
			}
			if got := h.holders("d"); !reflect.DeepEqual(got, []uint64{b}) {
				t.Fatalf("holders %v after the delay, want %d", got, b)
			}
			if g := eventsOf(h.last, Granted); len(g) != 1 || g[0].WaiterID != wb {
				t.Fatalf("granted %+v", g)
			}
			if got := h.waiters("d"); !reflect.DeepEqual(got, []uint64{wc}) {
				t.Fatalf("queue %v", got)
			}
			info, _, _ = h.tab.Describe("d")
			if info.DelayedUntil != 0 || info.DelayReason != "" || info.DelayRevision != 0 {
				t.Fatalf("delay still shown: %+v", info)
			}
			h.unchanged("EndDelay again", func() {
				if r := h.ok(h.apply(cmdEndDelay("d", end.Revision))); !r.Ignored {
					t.Fatalf("%+v", r)
				}
			})
		})
	}
	t.Run("delayed lock without waiters", func(t *testing.T) {
		h := newHarness(t)
		a := h.lease()
		h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: a, Names: []string{"d"}, LockDelayMs: 1})))
		end := h.ok(h.apply(cmdExpire(a, h.term)))
		if _, _, ok := h.tab.Describe("d"); !ok {
			t.Fatal("delayed lock vanished")
		}
		if s := h.tab.Stats(); s.Locks != 1 {
			t.Fatalf("stats %+v", s)
		}
		h.ok(h.apply(cmdEndDelay("d", end.Revision)))
		if _, _, ok := h.tab.Describe("d"); ok {
			t.Fatal("lock exists after its delay ended with nobody waiting")
		}
		if h.tab.DelayedLocks() != nil {
			t.Fatal("DelayedLocks not empty")
		}
	})
	t.Run("first waiter of an empty delayed lock keeps the running delay", func(t *testing.T) {
		// The lock is empty but delayed; a waiter that asks for another
		// delay (or another capacity) must not change the delay that runs:
		// a new leader schedules its end from DelayedLocks.
		h := newHarness(t)
		a, b := h.lease(), h.lease()
		h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: a, Names: []string{"d"}, LockDelayMs: 30_000})))
		end := h.ok(h.apply(cmdExpire(a, h.term)))
		w := h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: b, Names: []string{"d"}, Capacity: 2}))).WaiterID
		if dl := h.tab.DelayedLocks(); !reflect.DeepEqual(dl, []DelayedLock{{Name: "d", Delay: 30 * time.Second, DelayRevision: end.Revision}}) {
			t.Fatalf("DelayedLocks %+v, want the 30s delay that runs", dl)
		}
		if info, _, _ := h.tab.Describe("d"); info.Capacity != 2 || info.Delay != 30*time.Second {
			t.Fatalf("describe %+v", info)
		}
		h.ok(h.apply(cmdEndDelay("d", end.Revision)))
		if g := eventsOf(h.last, Granted); len(g) != 1 || g[0].WaiterID != w {
			t.Fatalf("granted %+v", g)
		}
		if h.tab.DelayedLocks() != nil {
			t.Fatal("DelayedLocks not empty")
		}
	})
	t.Run("multi-lock waiter waits for the delay of any of its locks", func(t *testing.T) {
		h := newHarness(t)
		a, b := h.lease(), h.lease()
		h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: a, Names: []string{"d1"}, LockDelayMs: 10})))
		w := h.queue(b, "d2", "d1")
		end := h.ok(h.apply(cmdExpire(a, h.term)))
		if h.holders("d2") != nil {
			t.Fatal("d2 granted alone")
		}
		h.ok(h.apply(cmdEndDelay("d1", end.Revision)))
		if g := eventsOf(h.last, Granted); len(g) != 2 || g[0].WaiterID != w {
			t.Fatalf("granted %+v", g)
		}
	})
}

func TestForceRelease(t *testing.T) {
	h := newHarness(t)
	a, b := h.lease(), h.lease()
	tok := h.hold(a, "f")
	wb := h.queue(b, "f")
	h.unchanged("bad force releases", func() {
		h.fails(h.apply(cmdForce("f", tok, "")), Invalid)
		h.fails(h.apply(cmdForce("f", tok, " \t\n")), Invalid)
		h.fails(h.apply(cmdForce("f", tok, strings.Repeat("r", MaxReasonBytes+1))), Invalid)
		h.fails(h.apply(cmdForce("f", tok+100, "why")), NotHolder)
		h.fails(h.apply(cmdForce("f", wb, "why")), NotHolder)
		h.fails(h.apply(cmdForce("nosuch", 0, "why")), NotHolder)
	})
	res := h.ok(h.apply(cmdForce("f", tok, "  operator: stuck job  ")))
	if res.Count != 1 {
		t.Fatalf("%+v", res)
	}
	fr := eventsOf(h.last, ForceReleased)
	if len(fr) != 1 || fr[0].LeaseID != a || fr[0].Token != tok || fr[0].Reason != "operator: stuck job" || fr[0].Name != "f" {
		t.Fatalf("force-released events %+v", fr)
	}
	if v, _ := h.tab.CheckFence("f", tok); v {
		t.Fatal("victim's token still valid")
	}
	// No delay configured: the next waiter is in at once.
	if got := h.holders("f"); !reflect.DeepEqual(got, []uint64{b}) {
		t.Fatalf("holders %v", got)
	}
	// The victim learns it lost the lock; its lease lives on.
	h.unchanged("victim's release", func() { h.fails(h.apply(cmdRelease(a, "f", tok)), NotHolder) })
	if _, ok := h.tab.Lease(a); !ok {
		t.Fatal("force release ended the victim's lease")
	}
	// Token 0 breaks every holder of a semaphore.
	var ls []uint64
	for range 3 {
		l := h.lease()
		ls = append(ls, l)
		h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: l, Names: []string{"sem"}, Capacity: 3})))
	}
	res = h.ok(h.apply(cmdForce("sem", 0, "reset")))
	fr = eventsOf(h.last, ForceReleased)
	if res.Count != 3 || len(fr) != 3 {
		t.Fatalf("%+v %+v", res, h.last)
	}
	for i, e := range fr {
		if e.LeaseID != ls[i] || e.Reason != "reset" {
			t.Fatalf("victim %d: %+v, want lease %d", i, e, ls[i])
		}
	}
	if _, _, ok := h.tab.Describe("sem"); ok {
		t.Fatal("semaphore still exists")
	}
}

func TestSetValue(t *testing.T) {
	h := newHarness(t)
	a, b := h.lease(), h.lease()
	tok := h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: a, Names: []string{"e"}, Value: []byte("v0")}))).Tokens[0]
	if info, _, _ := h.tab.Describe("e"); string(info.Holders[0].Value) != "v0" {
		t.Fatalf("value %q", info.Holders[0].Value)
	}
	res := h.ok(h.apply(cmdSetValue(a, "e", tok, "v1")))
	if !reflect.DeepEqual(res.Tokens, []uint64{tok}) || res.Revision != h.tab.Revision() {
		t.Fatalf("%+v", res)
	}
	if v := eventsOf(h.last, ValueSet); len(v) != 1 || v[0].Token != tok || v[0].LeaseID != a {
		t.Fatalf("events %+v", h.last)
	}
	if info, _, _ := h.tab.Describe("e"); string(info.Holders[0].Value) != "v1" {
		t.Fatalf("value %q", info.Holders[0].Value)
	}
	h.ok(h.apply(cmdSetValue(a, "e", tok, strings.Repeat("x", MaxValueBytes))))
	h.unchanged("bad set values", func() {
		h.fails(h.apply(cmdSetValue(b, "e", tok, "mine")), NotHolder)
		h.fails(h.apply(cmdSetValue(a, "e", tok-1, "old term")), NotHolder)
		h.fails(h.apply(cmdSetValue(a, "nosuch", 0, "x")), NotHolder)
		h.fails(h.apply(cmdSetValue(a, "e", tok, strings.Repeat("x", MaxValueBytes+1))), Invalid)
		h.fails(h.apply(cmdSetValue(777, "e", tok, "x")), NotFound)
	})
	// After a new grant, the old token cannot set the value.
	h.release(a, "e", tok)
	tok2 := h.hold(a, "e")
	h.unchanged("stale token", func() { h.fails(h.apply(cmdSetValue(a, "e", tok, "x")), NotHolder) })
	h.ok(h.apply(cmdSetValue(a, "e", tok2, "x")))
}

func TestQuotas(t *testing.T) {
	// MaxLeases (2^21) is not reached here: two million leases cost too
	// much for a unit test. The per-lease, per-lock and per-namespace
	// limits are.
	t.Run("MaxPerLease", func(t *testing.T) {
		h := newHarness(t)
		a, b := h.lease(), h.lease()
		h.hold(b, "busy")
		h.queue(a, "busy") // one wait
		for i := range MaxPerLease - 1 {
			if r := h.raw(encode(cmdAcq(a, "g/"+itoa(i)))); r.Err != nil || !r.Granted {
				t.Fatalf("acquire %d: %+v", i, r)
			}
		}
		h.unchanged("over the limit", func() {
			h.fails(h.apply(cmdAcq(a, "one/more")), Quota)
		})
		// Reentrant acquires and releases still work at the limit.
		h.ok(h.apply(cmdAcq(a, "g/0")))
		h.release(a, "g/0", 0)
		h.hold(a, "one/more")
	})
	t.Run("MaxPerLease counts every lock of a multi-lock", func(t *testing.T) {
		h := newHarness(t)
		a, b := h.lease(), h.lease()
		names := make([]string, MaxLocksPerAcquire)
		for i := range names {
			names[i] = "multi/" + itoa(i)
		}
		h.hold(b, names...)
		h.queue(a, names...) // 64 waits in one request
		for i := range MaxPerLease - 2*MaxLocksPerAcquire {
			if r := h.raw(encode(cmdAcq(a, "g/"+itoa(i)))); r.Err != nil || !r.Granted {
				t.Fatalf("acquire %d: %+v", i, r)
			}
		}
		// The lease has MaxPerLease-64 grants and waits; with one more
		// grant, 64 locks in one request are one too many, 63 fit exactly.
		h.hold(a, "extra")
		more := make([]string, MaxLocksPerAcquire)
		for i := range more {
			more[i] = "more/" + itoa(i)
		}
		h.unchanged("one lock too many", func() { h.fails(h.apply(cmdAcq(a, more...)), Quota) })
		h.hold(a, more[1:]...)
		h.unchanged("at the limit", func() { h.fails(h.apply(cmdAcq(a, "last")), Quota) })
		// When the 64-lock wait is granted, the lease stays within the limit.
		h.ok(h.apply(cmdRevoke(b)))
		if info, _ := h.tab.Lease(a); len(info.Held) != MaxPerLease {
			t.Fatalf("lease holds %d locks, want %d", len(info.Held), MaxPerLease)
		}
	})
	t.Run("MaxWaitersPerLock", func(t *testing.T) {
		h := newHarness(t)
		h.hold(h.lease(), "hot")
		var ls []uint64
		for range MaxWaitersPerLock + 1 {
			ls = append(ls, h.raw(encode(cmdGrant(time.Minute, ""))).LeaseID)
		}
		for i := range MaxWaitersPerLock {
			if r := h.raw(encode(cmdAcq(ls[i], "hot"))); r.Err != nil || r.Granted {
				t.Fatalf("waiter %d: %+v", i, r)
			}
		}
		if err := checkInvariants(h.tab); err != nil {
			t.Fatal(err)
		}
		last := ls[MaxWaitersPerLock]
		h.unchanged("waiter over the limit", func() { h.fails(h.apply(cmdAcq(last, "hot")), Quota) })
		h.unchanged("multi-lock waiter over the limit", func() { h.fails(h.apply(cmdAcq(last, "cold", "hot")), Quota) })
		h.hold(last, "cold")
		h.ok(h.apply(cmdCancel(ls[0], h.waiters("hot")[0])))
		h.queue(last, "hot")
	})
	t.Run("MaxWaitersPerNamespace", func(t *testing.T) {
		// Multi-lock waiters count once per lock: 64 locks held, and each
		// waiter waits for all 64.
		h := newHarness(t)
		names := make([]string, MaxLocksPerAcquire)
		for i := range names {
			names[i] = "ns/" + itoa(i)
		}
		h.hold(h.lease(), names...)
		full := MaxWaitersPerNamespace / len(names) // waiters that fit
		for range full {
			l := h.raw(encode(cmdGrant(time.Minute, ""))).LeaseID
			if r := h.raw(encode(cmdAcq(l, names...))); r.Err != nil || r.Granted {
				t.Fatalf("%+v", r)
			}
		}
		if err := checkInvariants(h.tab); err != nil {
			t.Fatal(err)
		}
		l := h.lease()
		need := MaxWaitersPerNamespace - full*len(names) // room left
		h.unchanged("namespace over the limit", func() {
			h.fails(h.apply(cmdAcq(l, names[:need+1]...)), Quota)
		})
		if need <= 0 {
			t.Fatalf("limits changed: %d waiters of %d locks fill the namespace exactly; pick another layout", full, len(names))
		}
		h.queue(l, names[:need]...)
		m := h.lease()
		h.unchanged("namespace full", func() { h.fails(h.apply(cmdAcq(m, "ns/other")), Quota) })
		// Other namespaces are not affected.
		h.hold(l, "other/x")
	})
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}
