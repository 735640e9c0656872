package locks

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	"google.golang.org/protobuf/proto"
)

// testNow is the proposer's wall clock used by the tests: a fixed instant,
// never time.Now.
const testNow int64 = 1_700_000_000_000_000_000

// harness applies commands to a table the way the raft loop does, records
// the events and checks the table's invariants after every command.
type harness struct {
	t      testing.TB
	tab    *Table
	index  uint64
	term   uint64
	now    int64
	events []Event // every event so far
	last   []Event // the events of the last command
}

func newHarness(t testing.TB) *harness {
	h := &harness{t: t, tab: NewTable(), term: 1, now: testNow}
	h.tab.Observe(func(evs []Event) {
		h.last = append(h.last, evs...)
		h.events = append(h.events, evs...)
	})
	return h
}

func encode(c *statev1.Command) []byte {
	b, err := proto.Marshal(c)
	if err != nil {
		panic(err)
	}
	return b
}

// raw applies data without any checks and returns the result.
func (h *harness) raw(data []byte) *Result {
	h.index++
	h.last = nil
	r := h.tab.Apply(h.index, h.term, data)
	if r == nil {
		return nil
	}
	return r.(*Result)
}

// apply applies a command, stamped with the harness clock unless it carries
// a time of its own, and checks the invariants.
func (h *harness) apply(c *statev1.Command) *Result {
	h.t.Helper()
	if c.GetProposedUnixNano() == 0 {
		c = proto.Clone(c).(*statev1.Command)
		c.ProposedUnixNano = h.now
	}
	res := h.raw(encode(c))
	if res == nil {
		h.t.Fatalf("Apply(%v) returned nil", c)
	}
	if err := checkInvariants(h.tab); err != nil {
		h.t.Fatalf("after %v: %v", c, err)
	}
	return res
}

// bumpTerm applies an empty entry of the next term, as a new leader does.
func (h *harness) bumpTerm() {
	h.term++
	if r := h.raw(nil); r != nil {
		h.t.Fatalf("empty entry returned %v", r)
	}
}

func (h *harness) snap() []byte {
	h.t.Helper()
	b, err := h.tab.Snapshot()
	if err != nil {
		h.t.Fatal(err)
	}
	return b
}

func (h *harness) ok(res *Result) *Result {
	h.t.Helper()
	if res.Err != nil {
		h.t.Fatalf("unexpected error %v: %v", res.Err.Code, res.Err)
	}
	return res
}

func (h *harness) fails(res *Result, code Code) {
	h.t.Helper()
	if res.Err == nil {
		h.t.Fatalf("succeeded (%+v), want a %v error", res, code)
	}
	if res.Err.Code != code {
		h.t.Fatalf("error %v (%s), want %v", res.Err.Code, res.Err.Msg, code)
	}
	if res.Err.Msg == "" {
		h.t.Fatalf("error %v has no message", res.Err.Code)
	}
}

// unchanged runs f and fails if it changed the table's snapshot, revision,
// or emitted events.
func (h *harness) unchanged(what string, f func()) {
	h.t.Helper()
	before, rev := h.snap(), h.tab.Revision()
	n := len(h.events)
	f()
	if after := h.snap(); !bytes.Equal(before, after) {
		h.t.Fatalf("%s changed the table:\nbefore %s\nafter  %s", what, snapText(before), snapText(after))
	}
	if got := h.tab.Revision(); got != rev {
		h.t.Fatalf("%s moved the revision from %d to %d", what, rev, got)
	}
	if len(h.events) != n {
		h.t.Fatalf("%s emitted events %v", what, h.events[n:])
	}
}

func snapText(b []byte) string {
	s := new(statev1.Snapshot)
	if err := proto.Unmarshal(b, s); err != nil {
		return fmt.Sprintf("<undecodable: %v>", err)
	}
	return s.String()
}

// lockState returns a snapshot without what is not lock or lease state:
// every lease's remembered results, the tries of requests told of waiters
// and grants, and the highest raft term seen.
func lockState(t testing.TB, b []byte) []byte {
	t.Helper()
	s := new(statev1.Snapshot)
	if err := proto.Unmarshal(b, s); err != nil {
		t.Fatal(err)
	}
	s.Term = 0
	for _, l := range s.GetLeases() {
		l.Dedup = nil
	}
	for _, w := range s.GetWaiters() {
		w.Attempt = 0
	}
	for _, lk := range s.GetLocks() {
		for _, h := range lk.GetHolders() {
			h.Attempt = 0
		}
	}
	out, err := proto.MarshalOptions{Deterministic: true}.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Commands.

func cmdGrant(ttl time.Duration, owner string) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_GrantLease{GrantLease: &statev1.GrantLease{TtlMs: ttl.Milliseconds(), Owner: owner}}}
}

func cmdGrantMs(ms int64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_GrantLease{GrantLease: &statev1.GrantLease{TtlMs: ms}}}
}

func cmdRevoke(id uint64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_RevokeLease{RevokeLease: &statev1.RevokeLease{LeaseId: id}}}
}

func cmdExpire(id, term uint64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_ExpireLease{ExpireLease: &statev1.ExpireLease{LeaseId: id, Term: term}}}
}

func cmdAcquire(a *statev1.Acquire) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Acquire{Acquire: a}}
}

func cmdAcq(lease uint64, names ...string) *statev1.Command {
	return cmdAcquire(&statev1.Acquire{LeaseId: lease, Names: names})
}

func cmdRelease(lease uint64, name string, token uint64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{LeaseId: lease, Name: name, Token: token}}}
}

func cmdReleaseReq(lease uint64, name string, token, req uint64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{LeaseId: lease, Name: name, Token: token, RequestId: req}}}
}

func cmdCancel(lease, waiter uint64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_Cancel{Cancel: &statev1.Cancel{LeaseId: lease, WaiterId: waiter}}}
}

func cmdForce(name string, token uint64, reason string) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_ForceRelease{ForceRelease: &statev1.ForceRelease{Name: name, Token: token, Reason: reason}}}
}

func cmdEndDelay(name string, rev uint64) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_EndDelay{EndDelay: &statev1.EndDelay{Name: name, DelayRevision: rev}}}
}

func cmdSetValue(lease uint64, name string, token uint64, value string) *statev1.Command {
	return &statev1.Command{Op: &statev1.Command_SetValue{SetValue: &statev1.SetValue{LeaseId: lease, Name: name, Token: token, Value: []byte(value)}}}
}

// Shorthands that must succeed.

func (h *harness) lease() uint64 {
	h.t.Helper()
	return h.leaseTTL(10 * time.Second)
}

func (h *harness) leaseTTL(ttl time.Duration) uint64 {
	h.t.Helper()
	res := h.ok(h.apply(cmdGrant(ttl, "owner")))
	if res.LeaseID == 0 || res.LeaseID != res.Revision {
		h.t.Fatalf("grant: lease id %d, revision %d", res.LeaseID, res.Revision)
	}
	return res.LeaseID
}

// hold acquires names for lease and requires the grant; it returns the
// token.
func (h *harness) hold(lease uint64, names ...string) uint64 {
	h.t.Helper()
	res := h.ok(h.apply(cmdAcq(lease, names...)))
	if !res.Granted || len(res.Tokens) != len(names) {
		h.t.Fatalf("acquire %v by %d: %+v, want a grant", names, lease, res)
	}
	return res.Tokens[0]
}

// queue acquires names for lease and requires it to wait; it returns the
// waiter id.
func (h *harness) queue(lease uint64, names ...string) uint64 {
	h.t.Helper()
	res := h.ok(h.apply(cmdAcq(lease, names...)))
	if res.Granted || res.WaiterID == 0 {
		h.t.Fatalf("acquire %v by %d: %+v, want a waiter", names, lease, res)
	}
	return res.WaiterID
}

func (h *harness) release(lease uint64, name string, token uint64) *Result {
	h.t.Helper()
	return h.ok(h.apply(cmdRelease(lease, name, token)))
}

// holders returns the lease ids holding name, in holder order.
func (h *harness) holders(name string) []uint64 {
	info, _, _ := h.tab.Describe(name)
	var out []uint64
	for _, x := range info.Holders {
		out = append(out, x.LeaseID)
	}
	return out
}

// waiters returns the waiter ids queued on name, in queue order.
func (h *harness) waiters(name string) []uint64 {
	info, _, _ := h.tab.Describe(name)
	var out []uint64
	for _, w := range info.Waiters {
		out = append(out, w.ID)
	}
	return out
}

func (h *harness) tokenOf(lease uint64, name string) uint64 {
	h.t.Helper()
	info, ok := h.tab.Lease(lease)
	if !ok {
		h.t.Fatalf("lease %d not found", lease)
	}
	for _, r := range info.Held {
		if r.Name == name {
			return r.Token
		}
	}
	h.t.Fatalf("lease %d does not hold %q", lease, name)
	return 0
}

// eventsOf filters the last command's events by type.
func eventsOf(evs []Event, typ EventType) []Event {
	var out []Event
	for _, e := range evs {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// checkInvariants walks the table's internal state and reports every
// broken invariant. It holds the table's read lock.
func checkInvariants(t *Table) error {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var errs []string
	fail := func(format string, args ...any) {
		if len(errs) < 20 {
			errs = append(errs, fmt.Sprintf(format, args...))
		}
	}
	if t.events != nil {
		fail("events of an applied command were kept: %v", t.events)
	}

	// Leases.
	totalHolds, totalWaits := 0, 0
	for id, l := range t.leases {
		if l.id != id {
			fail("lease under key %d has id %d", id, l.id)
		}
		if l.id > t.rev || l.grantedRev != l.id {
			fail("lease %d: granted revision %d, table revision %d", l.id, l.grantedRev, t.rev)
		}
		if l.ttl <= 0 || l.ttl > MaxTTL || l.ttl%time.Millisecond != 0 {
			fail("lease %d has TTL %v", id, l.ttl)
		}
		if len(l.owner) > MaxOwnerBytes {
			fail("lease %d owner is %d bytes", id, len(l.owner))
		}
		if len(l.dedup) > dedupPerLease {
			fail("lease %d remembers %d results", id, len(l.dedup))
		}
		seenReq := map[uint64]bool{}
		for _, d := range l.dedup {
			if d.GetRequestId() == 0 || seenReq[d.GetRequestId()] {
				fail("lease %d remembers request id %d wrongly (dup or zero)", id, d.GetRequestId())
			}
			seenReq[d.GetRequestId()] = true
		}
		entries := len(l.holds)
		for _, w := range l.waits {
			entries += len(w.names)
		}
		if entries > MaxPerLease {
			fail("lease %d has %d grants and waits (per lock)", id, entries)
		}
		for name, hd := range l.holds {
			totalHolds++
			if hd.lease != l {
				fail("lease %d holds %q through a holder of lease %d", id, name, hd.lease.id)
			}
			lk, ok := t.locks[name]
			if !ok {
				fail("lease %d holds %q, which is not in the table", id, name)
				continue
			}
			if !slices.Contains(lk.holders, hd) {
				fail("lease %d holds %q, but the lock does not list that holder", id, name)
			}
		}
		waitNames := map[string]uint64{}
		for wid, w := range l.waits {
			totalWaits++
			if w.id != wid || t.waiters[wid] != w {
				fail("lease %d waits with %d, which the table does not know as such", id, wid)
			}
			if w.lease != l {
				fail("lease %d lists waiter %d of lease %d", id, wid, w.lease.id)
			}
			for _, n := range w.names {
				if other, dup := waitNames[n]; dup {
					fail("lease %d waits for %q twice (waiters %d and %d)", id, n, other, wid)
				}
				waitNames[n] = wid
				if _, held := l.holds[n]; held {
					fail("lease %d waits for %q, which it holds", id, n)
				}
			}
		}
	}

	// How often each waiter is queued on each lock, in one pass.
	type entry struct {
		id   uint64
		name string
	}
	queued := map[entry]int{}
	for name, lk := range t.locks {
		for _, w := range lk.queue {
			queued[entry{w.id, name}]++
		}
	}

	// Waiters.
	if len(t.waiters) != totalWaits {
		fail("table has %d waiters, leases list %d", len(t.waiters), totalWaits)
	}
	for id, w := range t.waiters {
		if w.id != id {
			fail("waiter under key %d has id %d", id, w.id)
		}
		if w.id == 0 || w.id > t.rev {
			fail("waiter id %d, revision %d", w.id, t.rev)
		}
		if t.leases[w.lease.id] != w.lease {
			fail("waiter %d belongs to lease %d, which is gone", id, w.lease.id)
		}
		if w.lease.waits[id] != w {
			fail("waiter %d is not in its lease's waits", id)
		}
		if w.mode != ModeExclusive && w.mode != ModeShared {
			fail("waiter %d has mode %d", id, w.mode)
		}
		if len(w.names) == 0 || len(w.names) > MaxLocksPerAcquire {
			fail("waiter %d names %d locks", id, len(w.names))
		}
		if len(w.value) > MaxValueBytes {
			fail("waiter %d value is %d bytes", id, len(w.value))
		}
		seen := map[string]bool{}
		for _, n := range w.names {
			if seen[n] {
				fail("waiter %d names %q twice", id, n)
			}
			seen[n] = true
			if refValidName(n) != nil {
				fail("waiter %d names invalid %q", id, n)
			}
			if _, ok := t.locks[n]; !ok {
				fail("waiter %d waits for %q, which is not in the table", id, n)
				continue
			}
			if k := queued[entry{w.id, n}]; k != 1 {
				fail("waiter %d is %d times in the queue of %q", id, k, n)
			}
		}
	}

	// Locks.
	nsWaits := map[string]int{}
	totalHolders := 0
	for name, lk := range t.locks {
		if lk.name != name {
			fail("lock under key %q is named %q", name, lk.name)
		}
		if refValidName(name) != nil {
			fail("lock %q has an invalid name", name)
		}
		if lk.capacity < 1 || lk.capacity > MaxCapacity {
			fail("lock %q has capacity %d", name, lk.capacity)
		}
		if lk.delay < 0 || lk.delay > MaxLockDelay || lk.delay%time.Millisecond != 0 {
			fail("lock %q has delay %v", name, lk.delay)
		}
		if lk.delayed() {
			if lk.delayRev > t.rev {
				fail("lock %q delayed at revision %d > %d", name, lk.delayRev, t.rev)
			}
			if lk.delay <= 0 {
				fail("lock %q is in a delay but its delay is %v", name, lk.delay)
			}
			if lk.delayReason == "" {
				fail("lock %q is in a delay without a reason", name)
			}
		} else if lk.delayedUntil != 0 || lk.delayReason != "" {
			fail("lock %q is not delayed but shows until=%d reason=%q", name, lk.delayedUntil, lk.delayReason)
		}
		if len(lk.holders) == 0 && len(lk.queue) == 0 && !lk.delayed() {
			fail("lock %q is empty and not delayed, but still in the table", name)
		}
		if uint32(len(lk.holders)) > lk.capacity {
			fail("lock %q has %d holders, capacity %d", name, len(lk.holders), lk.capacity)
		}
		heldBy := map[uint64]bool{}
		for _, hd := range lk.holders {
			totalHolders++
			if hd.mode == ModeExclusive && len(lk.holders) != 1 {
				fail("lock %q has an exclusive holder among %d", name, len(lk.holders))
			}
			if hd.mode != ModeExclusive && hd.mode != ModeShared {
				fail("lock %q holder has mode %d", name, hd.mode)
			}
			if heldBy[hd.lease.id] {
				fail("lease %d holds %q twice", hd.lease.id, name)
			}
			heldBy[hd.lease.id] = true
			if t.leases[hd.lease.id] != hd.lease {
				fail("lock %q is held by lease %d, which is gone", name, hd.lease.id)
			}
			if hd.lease.holds[name] != hd {
				fail("lock %q holder is not in lease %d's holds", name, hd.lease.id)
			}
			if hd.token == 0 || hd.token > t.rev {
				fail("lock %q holder token %d, revision %d", name, hd.token, t.rev)
			}
			if hd.waiterID == 0 || hd.waiterID >= hd.token {
				fail("lock %q holder token %d from waiter %d", name, hd.token, hd.waiterID)
			}
			if _, waiting := t.waiters[hd.waiterID]; waiting {
				fail("lock %q holder granted to waiter %d, which still waits", name, hd.waiterID)
			}
		}
		for i, w := range lk.queue {
			if i > 0 && lk.queue[i-1].id >= w.id {
				fail("queue of %q is out of order: %d before %d", name, lk.queue[i-1].id, w.id)
			}
			if t.waiters[w.id] != w {
				fail("queue of %q has waiter %d unknown to the table", name, w.id)
			}
			if !slices.Contains(w.names, name) {
				fail("queue of %q has waiter %d for %v", name, w.id, w.names)
			}
			nsWaits[Namespace(name)]++
		}
		// No lost wake-up: the head of every queue cannot be granted.
		if len(lk.queue) > 0 && refGrantable(t, lk.queue[0]) {
			fail("lock %q: head waiter %d could be granted but waits", name, lk.queue[0].id)
		}
	}
	if totalHolders != totalHolds {
		fail("locks list %d holders, leases %d holds", totalHolders, totalHolds)
	}
	if len(nsWaits) != len(t.nsWaits) {
		fail("namespace waits %v, want %v", t.nsWaits, nsWaits)
	} else {
		for ns, k := range nsWaits {
			if t.nsWaits[ns] != k {
				fail("namespace waits %v, want %v", t.nsWaits, nsWaits)
				break
			}
		}
	}
	for ns, k := range nsWaits {
		if k > MaxWaitersPerNamespace {
			fail("namespace %q has %d waiters", ns, k)
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}

// refGrantable is the model's own statement of when a waiter can be granted:
// first in the queue of each of its locks, none of them delayed, and room in
// each.
func refGrantable(t *Table, w *waiter) bool {
	for _, n := range w.names {
		lk := t.locks[n]
		if lk == nil || len(lk.queue) == 0 || lk.queue[0] != w || lk.delayed() {
			return false
		}
		if w.mode == ModeExclusive {
			if len(lk.holders) > 0 {
				return false
			}
			continue
		}
		if uint32(len(lk.holders)) >= lk.capacity {
			return false
		}
		for _, hd := range lk.holders {
			if hd.mode == ModeExclusive {
				return false
			}
		}
	}
	return true
}

// refValidName is the model's statement of a valid lock name.
func refValidName(name string) error {
	if len(name) < 1 || len(name) > MaxNameBytes {
		return errors.New("length")
	}
	if !utf8.ValidString(name) {
		return errors.New("utf-8")
	}
	for _, seg := range strings.Split(name, "/") {
		if len(seg) == 0 {
			return errors.New("empty segment")
		}
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return errors.New("control")
		}
	}
	return nil
}
