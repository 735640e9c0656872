package locks

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func TestDescribe(t *testing.T) {
	h := newHarness(t)
	a := h.ok(h.apply(cmdGrant(time.Second, "alice"))).LeaseID
	b := h.ok(h.apply(cmdGrant(time.Second, "bob"))).LeaseID
	res := h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: a, Names: []string{"d"}, Capacity: 2, Mode: int32(ModeExclusive), Value: []byte("va"), LockDelayMs: 250})))
	wb := h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: b, Names: []string{"d", "e"}, Capacity: 2}))).WaiterID
	info, rev, ok := h.tab.Describe("d")
	want := LockInfo{
		Name: "d", Capacity: 2, Delay: 250 * time.Millisecond,
		Holders: []HolderInfo{{LeaseID: a, Owner: "alice", Token: res.Tokens[0], Mode: ModeExclusive, Value: []byte("va")}},
		Waiters: []WaiterInfo{{ID: wb, LeaseID: b, Owner: "bob", Mode: ModeShared, Names: []string{"d", "e"}}},
	}
	if !ok || rev != h.tab.Revision() || !reflect.DeepEqual(info, want) {
		t.Fatalf("Describe = %+v, %d, %v\nwant %+v", info, rev, ok, want)
	}
	if info, _, ok := h.tab.Describe("nosuch"); ok || info.Name != "nosuch" || info.Holders != nil {
		t.Fatalf("Describe(nosuch) = %+v, %v", info, ok)
	}
	la, _ := h.tab.Lease(a)
	if !reflect.DeepEqual(la.Held, []HolderRef{{Name: "d", Token: res.Tokens[0], Mode: ModeExclusive}}) || la.Owner != "alice" {
		t.Fatalf("Lease(a) = %+v", la)
	}
	lb, _ := h.tab.Lease(b)
	if !reflect.DeepEqual(lb.Waiting, []string{"d", "e"}) || lb.Held != nil {
		t.Fatalf("Lease(b) = %+v", lb)
	}
	if s := h.tab.Stats(); s != (Stats{Revision: h.tab.Revision(), Leases: 2, Locks: 2, Grants: 1, Waiters: 1}) {
		t.Fatalf("Stats = %+v", s)
	}
	// Describe shows the delay and why.
	h.now = testNow + 1000
	end := h.ok(h.apply(cmdExpire(a, h.term)))
	info, _, _ = h.tab.Describe("d")
	if info.DelayedUntil != testNow+1000+int64(250*time.Millisecond) || info.DelayRevision != end.Revision || info.DelayReason != "holder's lease expired" {
		t.Fatalf("delayed: %+v", info)
	}
}

func TestList(t *testing.T) {
	h := newHarness(t)
	a := h.lease()
	for _, n := range []string{"b/2", "a/1", "b/1", "b/3", "c"} {
		h.hold(a, n)
	}
	names := func(infos []LockInfo) []string {
		var out []string
		for _, i := range infos {
			out = append(out, i.Name)
		}
		return out
	}
	infos, rev, more := h.tab.List("", "", 100)
	if !reflect.DeepEqual(names(infos), []string{"a/1", "b/1", "b/2", "b/3", "c"}) || more || rev != h.tab.Revision() {
		t.Fatalf("List all = %v %v", names(infos), more)
	}
	infos, _, more = h.tab.List("b/", "", 2)
	if !reflect.DeepEqual(names(infos), []string{"b/1", "b/2"}) || !more {
		t.Fatalf("List page 1 = %v %v", names(infos), more)
	}
	infos, _, more = h.tab.List("b/", "b/2", 2)
	if !reflect.DeepEqual(names(infos), []string{"b/3"}) || more {
		t.Fatalf("List page 2 = %v %v", names(infos), more)
	}
	if infos, _, _ = h.tab.List("zzz", "", 10); infos != nil {
		t.Fatalf("List(zzz) = %v", names(infos))
	}
	if infos, _, more = h.tab.List("", "", 0); infos != nil || !more {
		t.Fatalf("List limit 0 = %v %v", names(infos), more)
	}
}

func TestCheckFence(t *testing.T) {
	h := newHarness(t)
	a, b := h.lease(), h.lease()
	tok := h.hold(a, "f")
	for _, c := range []struct {
		name  string
		token uint64
		valid bool
	}{{"f", tok, true}, {"f", tok - 1, false}, {"f", tok + 1, false}, {"f", 0, false}, {"g", tok, false}} {
		if v, rev := h.tab.CheckFence(c.name, c.token); v != c.valid || rev != h.tab.Revision() {
			t.Errorf("CheckFence(%q, %d) = %v, %d", c.name, c.token, v, rev)
		}
	}
	h.queue(b, "f")
	h.release(a, "f", tok)
	if v, _ := h.tab.CheckFence("f", tok); v {
		t.Fatal("old token valid after handoff")
	}
	if v, _ := h.tab.CheckFence("f", h.tokenOf(b, "f")); !v {
		t.Fatal("new token invalid")
	}
}

// buildTable applies a fixed mix of commands that leaves leases, holders
// of every mode, multi-lock waiters, values, a delay and dedup records.
func buildTable(t testing.TB) *harness {
	h := newHarness(t)
	a, b, c, d := h.lease(), h.lease(), h.lease(), h.lease()
	h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: a, Names: []string{"m", "rw"}, Capacity: 1, RequestId: 1, Value: []byte("v")})))
	h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: b, Names: []string{"s"}, Capacity: 3, RequestId: 1})))
	h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: c, Names: []string{"s"}, Capacity: 3, Mode: int32(ModeExclusive), RequestId: 1})))
	h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: d, Names: []string{"rw", "m"}, RequestId: 7})))
	h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: b, Names: []string{"x/y"}, LockDelayMs: 2000, RequestId: 2})))
	h.fails(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: d, Names: []string{"bad//name"}, RequestId: 8})), Invalid)
	e := h.lease()
	h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: e, Names: []string{"dl"}, LockDelayMs: 3000})))
	h.ok(h.apply(cmdExpire(e, h.term)))
	h.bumpTerm()
	return h
}

func TestSnapshotRestore(t *testing.T) {
	h := buildTable(t)
	snap := h.snap()
	again := h.snap()
	if !bytes.Equal(snap, again) {
		t.Fatal("two snapshots of one table differ")
	}
	// Equal tables give equal bytes.
	if other := buildTable(t).snap(); !bytes.Equal(snap, other) {
		t.Fatal("equal tables give different snapshots")
	}
	// The record-at-a-time encoding is the one proto.Marshal gives.
	var decoded statev1.Snapshot
	if err := proto.Unmarshal(snap, &decoded); err != nil {
		t.Fatal(err)
	}
	if canonical, _ := (proto.MarshalOptions{Deterministic: true}).Marshal(&decoded); !bytes.Equal(snap, canonical) {
		t.Fatal("the snapshot's encoding differs from proto.Marshal's")
	}
	r := NewTable()
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if err := checkInvariants(r); err != nil {
		t.Fatal(err)
	}
	back, err := r.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snap, back) {
		t.Fatalf("restore+snapshot differs:\n%s\n%s", snapText(snap), snapText(back))
	}
	if r.Revision() != h.tab.Revision() || r.Stats() != h.tab.Stats() {
		t.Fatalf("restored stats %+v, want %+v", r.Stats(), h.tab.Stats())
	}
	for _, n := range []string{"m", "rw", "s", "x/y", "dl"} {
		i1, _, _ := h.tab.Describe(n)
		i2, _, _ := r.Describe(n)
		if !reflect.DeepEqual(i1, i2) {
			t.Errorf("Describe(%q) after restore = %+v, want %+v", n, i2, i1)
		}
	}
	if !reflect.DeepEqual(r.DelayedLocks(), h.tab.DelayedLocks()) {
		t.Fatal("delayed locks differ after restore")
	}
	// Restoring over a table with content replaces it.
	h2 := newHarness(t)
	h2.hold(h2.lease(), "zzz")
	if err := h2.tab.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(h2.snap(), snap) {
		t.Fatal("restore over a table kept old content")
	}
	// The restored term still filters stale expiries, and the restored
	// revision continues.
	if res := r.Apply(100, h.term, encode(cmdExpire(1, h.term-1))).(*Result); !res.Ignored {
		t.Fatalf("stale expiry after restore: %+v", res)
	}
	res := r.Apply(101, h.term, encode(cmdGrant(time.Second, ""))).(*Result)
	if res.Revision != h.tab.Revision()+1 {
		t.Fatalf("revision after restore %d, want %d", res.Revision, h.tab.Revision()+1)
	}
}

func TestRestoreRejectsBadSnapshots(t *testing.T) {
	h := buildTable(t)
	good := h.snap()
	mutate := func(f func(s *statev1.Snapshot)) []byte {
		s := new(statev1.Snapshot)
		if err := proto.Unmarshal(good, s); err != nil {
			t.Fatal(err)
		}
		f(s)
		b, err := proto.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := map[string][]byte{
		"garbage": {0xff, 0x01},
		"waiter of unknown lease": mutate(func(s *statev1.Snapshot) {
			s.Waiters[0].LeaseId = 999
		}),
		"holder of unknown lease": mutate(func(s *statev1.Snapshot) {
			for _, l := range s.Locks {
				if len(l.Holders) > 0 {
					l.Holders[0].LeaseId = 999
					return
				}
			}
			t.Fatal("no holder in the snapshot")
		}),
		"queue with unknown waiter": mutate(func(s *statev1.Snapshot) {
			s.Locks[0].Queue = append(s.Locks[0].Queue, 999)
		}),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			target := buildTable(t)
			before := target.snap()
			if err := target.tab.Restore(data); err == nil {
				t.Fatal("bad snapshot restored")
			}
			if !bytes.Equal(before, target.snap()) {
				t.Fatal("failed restore changed the table")
			}
		})
	}
}

// TestConcurrentReads runs the read methods beside Apply; run with -race.
func TestConcurrentReads(t *testing.T) {
	h := newHarness(t)
	a, b := h.lease(), h.lease()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				h.tab.Describe("x")
				h.tab.List("", "", 10)
				h.tab.CheckFence("x", 3)
				h.tab.Lease(a)
				h.tab.Stats()
				h.tab.DelayedLocks()
				h.tab.LeaseTTLs()
				if _, err := h.tab.Snapshot(); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	for i := range 300 {
		l := a
		if i%2 == 1 {
			l = b
		}
		h.tab.Apply(uint64(1000+i), 1, encode(cmdAcquire(&statev1.Acquire{LeaseId: l, Names: []string{"x"}, Value: []byte{byte(i)}})))
		h.tab.Apply(uint64(2000+i), 1, encode(cmdRelease(l, "x", 0)))
	}
	close(stop)
	wg.Wait()
}

func TestWaiter(t *testing.T) {
	h := newHarness(t)
	a, b, c := h.lease(), h.lease(), h.lease()
	h.hold(a, "x")
	h.hold(a, "y")
	wb := h.queue(b, "x", "y")
	wc := h.queue(c, "x")
	check := func(lease, w uint64, state WaiterState, tokens []uint64, pos uint32) {
		t.Helper()
		s, toks, p := h.tab.Waiter(lease, w)
		if s != state || !reflect.DeepEqual(toks, tokens) || p != pos {
			t.Fatalf("Waiter(%d, %d) = %v %v %d, want %v %v %d", lease, w, s, toks, p, state, tokens, pos)
		}
	}
	check(b, wb, WaiterQueued, nil, 1)
	check(c, wc, WaiterQueued, nil, 2)
	check(c, wb, WaiterGone, nil, 0)   // another lease's waiter
	check(999, wb, WaiterGone, nil, 0) // unknown lease
	check(b, 12345, WaiterGone, nil, 0)
	h.ok(h.apply(cmdRevoke(a)))
	tok := h.tokenOf(b, "x")
	check(b, wb, WaiterGranted, []uint64{tok, tok}, 0)
	check(c, wc, WaiterQueued, nil, 1)
	// A reentrant grant is not reported as the waiter's.
	h.ok(h.apply(cmdAcq(b, "x")))
	check(b, wb, WaiterGranted, []uint64{tok, tok}, 0)
	// Once one of the locks is released, the rest is still that grant.
	h.release(b, "y", tok)
	check(b, wb, WaiterGranted, []uint64{tok}, 0)
	h.ok(h.apply(cmdCancel(b, wb)))
	check(b, wb, WaiterGone, nil, 0)
	check(c, wc, WaiterGranted, []uint64{h.tokenOf(c, "x")}, 0)
	h.ok(h.apply(cmdExpire(c, h.term)))
	check(c, wc, WaiterGone, nil, 0)
}

func TestNamespaces(t *testing.T) {
	h := newHarness(t)
	a, b := h.lease(), h.lease()
	h.hold(a, "jobs/x")
	h.hold(a, "jobs/y")
	h.queue(b, "jobs/x")
	h.hold(b, "web/z")
	got := h.tab.Namespaces()
	want := map[string]NamespaceStats{"jobs": {Locks: 2, Grants: 2, Waiters: 1}, "web": {Locks: 1, Grants: 1}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Namespaces() = %v, want %v", got, want)
	}
}

// A backup restored into a new cluster keeps the table and its revision,
// and forgets the old cluster's raft term.
func TestSnapshotRevisionAndReseed(t *testing.T) {
	h := buildTable(t)
	h.bumpTerm()
	h.bumpTerm()
	snap := h.snap()
	rev, err := SnapshotRevision(snap)
	if err != nil || rev != h.tab.Revision() {
		t.Fatalf("SnapshotRevision = %d, %v; want %d", rev, err, h.tab.Revision())
	}
	if rev, err := SnapshotRevision(nil); err != nil || rev != 0 {
		t.Fatalf("SnapshotRevision(empty) = %d, %v", rev, err)
	}
	if _, err := SnapshotRevision([]byte{0xff}); err == nil {
		t.Fatal("SnapshotRevision took a bad snapshot")
	}
	seeded, err := Reseed(snap)
	if err != nil {
		t.Fatal(err)
	}
	r := NewTable()
	if err := r.Restore(seeded); err != nil {
		t.Fatal(err)
	}
	if r.term != 0 || r.Revision() != h.tab.Revision() || r.Stats() != h.tab.Stats() {
		t.Fatalf("reseeded: term %d revision %d stats %+v; want term 0, revision %d, stats %+v", r.term, r.Revision(), r.Stats(), h.tab.Revision(), h.tab.Stats())
	}
	// An expiry stamped with the new cluster's first terms is not stale.
	lease, _ := h.tab.Leases(0, 1)
	if len(lease) == 0 {
		t.Fatal("no leases in the table")
	}
	if res := r.Apply(1000, 2, encode(cmdExpire(lease[0].ID, 2))).(*Result); res.Ignored || res.Err != nil {
		t.Fatalf("an expiry of the new cluster's term 2 was not applied: %+v", res)
	}
}

// Snapshot writes leases, locks and waiters in that order, but a snapshot is
// a protobuf message, whose fields may come in any order; Restore must not
// depend on it.
func TestRestoreTakesRecordsInAnyOrder(t *testing.T) {
	h := buildTable(t)
	snap := h.snap()
	var records [][]byte
	for rest := snap; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 {
			t.Fatal(protowire.ParseError(n))
		}
		m := protowire.ConsumeFieldValue(num, typ, rest[n:])
		if m < 0 {
			t.Fatal(protowire.ParseError(m))
		}
		records = append(records, rest[:n+m])
		rest = rest[n+m:]
	}
	if len(records) < 6 {
		t.Fatalf("only %d records in the snapshot", len(records))
	}
	slices.Reverse(records)
	r := NewTable()
	if err := r.Restore(bytes.Join(records, nil)); err != nil {
		t.Fatal(err)
	}
	if back, _ := r.Snapshot(); !bytes.Equal(back, snap) {
		t.Fatalf("restored from reversed records:\n%s\nwant\n%s", snapText(back), snapText(snap))
	}
}
