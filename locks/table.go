package locks

import (
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	"google.golang.org/protobuf/proto"
)

// Mode is how a holder holds a lock. Its values are the API's.
type Mode int32

const (
	// ModeDefault is exclusive for a lock of capacity 1 and shared (one
	// slot) for a lock of larger capacity.
	ModeDefault Mode = 0
	// ModeExclusive holds the lock alone.
	ModeExclusive Mode = 1
	// ModeShared holds the lock beside other shared holders, up to the
	// lock's capacity.
	ModeShared Mode = 2
)

// Table is the replicated lock table. Apply, Snapshot and Restore are called
// by the raft loop; the read methods may be called from any goroutine.
type Table struct {
	mu       sync.RWMutex
	rev      uint64 // last revision
	term     uint64 // highest raft term among applied entries
	leases   map[uint64]*lease
	locks    map[string]*lock
	waiters  map[uint64]*waiter
	nsWaits  map[string]int // queued waiter entries per namespace
	byWhom   map[string]int // leases per principal (tokens only)
	events   []Event        // of the command being applied
	by       string         // the principal of the command being applied
	observer func([]Event)
}

type lease struct {
	id         uint64
	ttl        time.Duration
	owner      string
	principal  string // who granted it (a token's name), "" without authentication
	grantedRev uint64
	holds      map[string]*holder // by lock name
	waits      map[uint64]*waiter // by waiter id
	dedup      []*statev1.Dedup   // the most recent results, oldest first
}

type waiter struct {
	id        uint64 // the revision at which it queued
	lease     *lease
	names     []string
	mode      Mode
	attempt   uint32 // the latest try of requestID told of the waiter
	value     []byte
	requestID uint64
}

type holder struct {
	lease *lease
	token uint64
	mode  Mode
	// attempt is the latest try of requestID told of the grant, or
	// pinned: a withdrawal of an earlier try must not undo it.
	attempt   uint32
	value     []byte
	waiterID  uint64 // the waiter it was granted to; 0 if granted at once
	requestID uint64 // the request that queued that waiter
}

// pinned marks a grant that another request was told of (a reentrant
// acquire): only a release or the end of its lease ends it.
const pinned = math.MaxUint32

type lock struct {
	name         string
	capacity     uint32
	delay        time.Duration
	delayedUntil int64 // Unix nanoseconds, for display; 0 = not delayed
	delayReason  string
	delayRev     uint64 // the revision at which the current delay began
	holders      []*holder
	queue        []*waiter
}

func (l *lock) delayed() bool { return l.delayRev != 0 }

// NewTable returns an empty table.
func NewTable() *Table {
	return &Table{
		leases:  map[uint64]*lease{},
		locks:   map[string]*lock{},
		waiters: map[uint64]*waiter{},
		nsWaits: map[string]int{},
		byWhom:  map[string]int{},
	}
}

// Observe registers fn to receive the events of every applied command, in
// order, on the applying goroutine, after the table's lock is released. fn
// must not block.
func (t *Table) Observe(fn func([]Event)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.observer = fn
}

// Revision is the table's last revision.
func (t *Table) Revision() uint64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.rev
}

// Apply applies one committed raft entry and returns its *Result (nil for an
// empty entry). A command that fails returns a Result with Err set and
// changes nothing.
func (t *Table) Apply(index, term uint64, data []byte) any {
	t.mu.Lock()
	if term > t.term {
		t.term = term
	}
	var res *Result
	if len(data) > 0 {
		res = t.apply(data)
	}
	events, observer := t.events, t.observer
	t.events = nil
	t.mu.Unlock()
	if observer != nil && len(events) > 0 {
		observer(events)
	}
	if res == nil {
		return nil
	}
	return res
}

func (t *Table) apply(data []byte) *Result {
	cmd := new(statev1.Command)
	if err := proto.Unmarshal(data, cmd); err != nil {
		return &Result{Err: errorf(Invalid, "undecodable command: %v", err)}
	}
	now := cmd.GetProposedUnixNano()
	t.by = cmd.GetPrincipal()
	defer func() { t.by = "" }()
	switch op := cmd.GetOp().(type) {
	case *statev1.Command_GrantLease:
		return t.grantLease(op.GrantLease, cmd.GetPrincipal())
	case *statev1.Command_RevokeLease:
		if err := t.mayUse(cmd, op.RevokeLease.GetLeaseId()); err != nil {
			return &Result{Err: err}
		}
		return t.endLease(op.RevokeLease.GetLeaseId(), "revoked", now)
	case *statev1.Command_ExpireLease:
		if op.ExpireLease.GetTerm() < t.term {
			// Proposed by a leader whose term has passed: the new leader
			// restarted every deadline and decides afresh.
			return &Result{Ignored: true, Revision: t.rev}
		}
		return t.endLease(op.ExpireLease.GetLeaseId(), "expired", now)
	case *statev1.Command_Acquire:
		a := op.Acquire
		return t.dedup(cmd, a.GetLeaseId(), a.GetRequestId(), a.GetAttempt(), func(l *lease) *Result { return t.acquire(l, a) })
	case *statev1.Command_Release:
		r := op.Release
		return t.dedup(cmd, r.GetLeaseId(), r.GetRequestId(), 0, func(l *lease) *Result { return t.release(l, r) })
	case *statev1.Command_SetValue:
		s := op.SetValue
		return t.dedup(cmd, s.GetLeaseId(), s.GetRequestId(), 0, func(l *lease) *Result { return t.setValue(l, s) })
	case *statev1.Command_Cancel:
		if err := t.mayUse(cmd, op.Cancel.GetLeaseId()); err != nil {
			return &Result{Err: err}
		}
		return t.cancel(op.Cancel)
	case *statev1.Command_ForceRelease:
		return t.forceRelease(op.ForceRelease, now)
	case *statev1.Command_EndDelay:
		return t.endDelay(op.EndDelay)
	default:
		return &Result{Err: errorf(Invalid, "unknown command")}
	}
}

// mayUse refuses a command that names a lease granted to another
// principal, unless it comes from an admin or from a cluster without
// authentication. An unknown lease passes: the command itself reports it.
func (t *Table) mayUse(cmd *statev1.Command, leaseID uint64) *Error {
	p := cmd.GetPrincipal()
	if p == "" || cmd.GetAdmin() {
		return nil
	}
	if l, ok := t.leases[leaseID]; ok && l.principal != p {
		return errorf(Denied, "lease %d belongs to another principal", leaseID)
	}
	return nil
}

// dedup runs a lease's request once: a request id seen before returns the
// result it got the first time and changes nothing, but for noting the
// latest try (attempt) of the request, which a cancel of an earlier try
// must not undo.
func (t *Table) dedup(cmd *statev1.Command, leaseID, requestID uint64, attempt uint32, run func(*lease) *Result) *Result {
	l, ok := t.leases[leaseID]
	if !ok {
		return &Result{Err: errorf(NotFound, "lease %d not found (it never existed, was revoked or expired)", leaseID)}
	}
	if err := t.mayUse(cmd, leaseID); err != nil {
		return &Result{Err: err}
	}
	if requestID != 0 {
		for _, d := range l.dedup {
			if d.GetRequestId() == requestID {
				if attempt > d.GetAttempt() {
					d.Attempt = attempt
					t.raiseTry(l, d.GetResult().GetWaiterId(), requestID, attempt)
				}
				res := resultFromProto(d.GetResult())
				res.Duplicate = true
				return res
			}
		}
	}
	res := run(l)
	if requestID != 0 {
		if _, alive := t.leases[leaseID]; alive {
			if len(l.dedup) == dedupPerLease {
				l.dedup = append(l.dedup[:0], l.dedup[1:]...)
			}
			l.dedup = append(l.dedup, &statev1.Dedup{RequestId: requestID, Result: res.toProto(), Attempt: attempt})
		}
	}
	return res
}

// raiseTry notes that try attempt of request was told of the lease's
// waiter waiterID, or of the grant it became.
func (t *Table) raiseTry(l *lease, waiterID, request uint64, attempt uint32) {
	if waiterID == 0 {
		return
	}
	if w, ok := l.waits[waiterID]; ok && w.requestID == request {
		w.attempt = max(w.attempt, attempt)
	}
	for _, h := range l.holds {
		if h.waiterID == waiterID && h.requestID == request && h.attempt != pinned {
			h.attempt = max(h.attempt, attempt)
		}
	}
}

func (t *Table) next() uint64 {
	t.rev++
	return t.rev
}

func (t *Table) emit(e Event) {
	if e.Revision == 0 {
		e.Revision = t.rev
	}
	e.By = t.by
	t.events = append(t.events, e)
}

func (t *Table) grantLease(g *statev1.GrantLease, principal string) *Result {
	// Check the milliseconds before converting them: a huge count would
	// overflow the Duration and could wrap around into the valid range.
	ms := g.GetTtlMs()
	switch {
	case ms <= 0:
		return &Result{Err: errorf(Invalid, "lease TTL must be positive")}
	case ms > MaxTTL.Milliseconds():
		return &Result{Err: errorf(Invalid, "lease TTL of %d ms exceeds the limit of %v", ms, MaxTTL)}
	case len(g.GetOwner()) > MaxOwnerBytes:
		return &Result{Err: errorf(Invalid, "owner label is %d bytes, more than the limit of %d", len(g.GetOwner()), MaxOwnerBytes)}
	case len(principal) > MaxOwnerBytes:
		return &Result{Err: errorf(Invalid, "principal is %d bytes, more than the limit of %d", len(principal), MaxOwnerBytes)}
	case len(t.leases) >= MaxLeases:
		return &Result{Err: errorf(Quota, "the table holds %d leases, its limit", MaxLeases)}
	case principal != "" && t.byWhom[principal] >= MaxLeasesPerPrincipal:
		return &Result{Err: errorf(Quota, "%q holds %d leases, the limit per token", principal, MaxLeasesPerPrincipal)}
	}
	ttl := time.Duration(ms) * time.Millisecond
	id := t.next()
	if principal != "" {
		t.byWhom[principal]++
	}
	t.leases[id] = &lease{id: id, ttl: ttl, owner: g.GetOwner(), principal: principal, grantedRev: id, holds: map[string]*holder{}, waits: map[uint64]*waiter{}}
	t.emit(Event{Type: LeaseGranted, LeaseID: id, TTL: ttl})
	return &Result{Revision: id, LeaseID: id}
}

// endLease releases everything a lease holds and withdraws its waiters.
func (t *Table) endLease(id uint64, reason string, now int64) *Result {
	l, ok := t.leases[id]
	if !ok {
		return &Result{Err: errorf(NotFound, "lease %d not found", id)}
	}
	t.next()
	delete(t.leases, id)
	if p := l.principal; p != "" {
		if t.byWhom[p]--; t.byWhom[p] <= 0 {
			delete(t.byWhom, p)
		}
	}
	var touched []*lock
	for _, w := range sortedWaiters(l.waits) {
		touched = append(touched, t.unqueue(w, reason)...)
	}
	for _, name := range sortedKeys(l.holds) {
		h := l.holds[name]
		lk := t.locks[name]
		t.removeHolder(lk, h)
		t.emit(Event{Type: Released, Name: name, LeaseID: id, Token: h.token, Reason: reason})
		if reason == "expired" && lk.delay > 0 {
			t.startDelay(lk, now, "holder's lease "+reason)
		}
		touched = append(touched, lk)
	}
	t.emit(Event{Type: LeaseEnded, LeaseID: id, Reason: reason})
	t.grantAll(touched)
	return &Result{Revision: t.rev, LeaseID: id}
}

func (t *Table) acquire(l *lease, a *statev1.Acquire) *Result {
	names := a.GetNames()
	mode := Mode(a.GetMode())
	capacity := a.GetCapacity()
	if capacity == 0 {
		capacity = 1
	}
	delayMs := a.GetLockDelayMs()
	if delayMs < 0 || delayMs > MaxLockDelay.Milliseconds() {
		// Checked in milliseconds: a huge count would overflow the
		// Duration and could wrap around into the valid range.
		return &Result{Err: errorf(Invalid, "lock delay of %d ms is outside [0, %v]", delayMs, MaxLockDelay)}
	}
	delay := time.Duration(delayMs) * time.Millisecond
	if err := validateAcquire(names, mode, capacity, delay, a.GetValue()); err != nil {
		return &Result{Err: err}
	}
	if mode == ModeDefault {
		mode = ModeShared
		if capacity == 1 {
			mode = ModeExclusive
		}
	}
	// Reentrancy: a lease that holds every named lock gets its grants back.
	held := 0
	for _, n := range names {
		if _, ok := l.holds[n]; ok {
			held++
		}
	}
	if held == len(names) {
		res := &Result{Granted: true, Revision: t.rev}
		for _, n := range names {
			h := l.holds[n]
			res.Tokens = append(res.Tokens, h.token)
			switch {
			case h.attempt == pinned:
			case h.requestID == a.GetRequestId() && h.waiterID != 0:
				h.attempt = max(h.attempt, a.GetAttempt()) // a retry
			default:
				// Another request is told it holds the lock: withdrawing
				// the request that queued for it must not release it.
				h.attempt = pinned
			}
		}
		return res
	}
	if held > 0 {
		return &Result{Err: errorf(Conflict, "lease %d holds some of the locks named but not all; release them or acquire the rest separately", l.id)}
	}
	// A lease that already waits for exactly these locks gets its waiter
	// back; waiting for one of them in another request is a conflict. A
	// lease's waiters name disjoint locks, so at most one has these names,
	// but several may overlap them: report the oldest, so that every node
	// answers (and remembers, for de-duplication) the same message whatever
	// the map's order.
	var overlap *waiter
	for _, w := range l.waits {
		if sameNames(w.names, names) {
			if w.requestID == a.GetRequestId() {
				w.attempt = max(w.attempt, a.GetAttempt()) // a retry
			}
			return &Result{Revision: t.rev, WaiterID: w.id, Position: t.position(w)}
		}
		if overlap != nil && overlap.id < w.id {
			continue
		}
		for _, n := range names {
			if contains(w.names, n) {
				overlap = w
				break
			}
		}
	}
	if overlap != nil {
		for _, n := range names {
			if contains(overlap.names, n) {
				return &Result{Err: errorf(Conflict, "lease %d already waits for lock %q in another request", l.id, n)}
			}
		}
	}
	for _, n := range names {
		if lk, ok := t.locks[n]; ok && (len(lk.holders) > 0 || len(lk.queue) > 0) && lk.capacity != capacity {
			return &Result{Err: errorf(Conflict, "lock %q has capacity %d, not %d", n, lk.capacity, capacity)}
		}
	}
	if err := t.checkQuotas(l, names, a.GetTry()); err != nil {
		return &Result{Err: err}
	}
	if a.GetTry() {
		// A try is granted only if it would be at once: then, being first
		// in every queue with room in every lock, the grant below is certain.
		for _, n := range names {
			if lk, ok := t.locks[n]; ok && !lk.grantableNow(mode) {
				return &Result{Revision: t.rev}
			}
		}
	}
	w := &waiter{id: t.next(), lease: l, names: names, mode: mode, attempt: a.GetAttempt(), value: a.GetValue(), requestID: a.GetRequestId()}
	for _, n := range names {
		lk, ok := t.locks[n]
		if !ok {
			lk = &lock{name: n, capacity: capacity, delay: delay}
			t.locks[n] = lk
		} else if len(lk.holders) == 0 && len(lk.queue) == 0 {
			// An unused lock stays in the table only during a delay: it
			// takes the new capacity, but the running delay keeps its
			// length, since a new leader schedules its end from it
			// (DelayedLocks).
			lk.capacity = capacity
		}
		lk.queue = append(lk.queue, w)
		t.nsWaits[Namespace(n)]++
	}
	t.waiters[w.id] = w
	l.waits[w.id] = w
	if !a.GetTry() {
		for _, n := range names {
			t.emit(Event{Type: Queued, Name: n, LeaseID: l.id, WaiterID: w.id})
		}
	}
	t.grantAll(t.locksOf(names))
	if h, ok := l.holds[names[0]]; ok && h.waiterID == w.id {
		res := &Result{Granted: true, Revision: t.rev, WaiterID: w.id}
		for _, n := range names {
			res.Tokens = append(res.Tokens, l.holds[n].token)
		}
		return res
	}
	return &Result{Revision: w.id, WaiterID: w.id, Position: t.position(w)}
}

func validateAcquire(names []string, mode Mode, capacity uint32, delay time.Duration, value []byte) *Error {
	switch {
	case len(names) == 0:
		return errorf(Invalid, "no lock named")
	case len(names) > MaxLocksPerAcquire:
		return errorf(Invalid, "%d locks in one acquire, more than the limit of %d", len(names), MaxLocksPerAcquire)
	case mode < ModeDefault || mode > ModeShared:
		return errorf(Invalid, "unknown mode %d", mode)
	case capacity > MaxCapacity:
		return errorf(Invalid, "capacity %d exceeds the limit of %d", capacity, MaxCapacity)
	case delay < 0 || delay > MaxLockDelay:
		return errorf(Invalid, "lock delay %v is outside [0, %v]", delay, MaxLockDelay)
	case len(value) > MaxValueBytes:
		return errorf(Invalid, "value is %d bytes, more than the limit of %d", len(value), MaxValueBytes)
	}
	seen := map[string]bool{}
	for _, n := range names {
		if err := validateName(n); err != nil {
			return err
		}
		if seen[n] {
			return errorf(Invalid, "lock %q named twice", n)
		}
		seen[n] = true
	}
	return nil
}

// checkQuotas checks the limits an acquire could break. A try never queues,
// so only the lease's own limit applies to it.
func (t *Table) checkQuotas(l *lease, names []string, try bool) *Error {
	// Per lock, waits as grants, and with the locks asked for: a multi-lock
	// wait becomes one grant per lock.
	entries := len(l.holds) + len(names)
	for _, w := range l.waits {
		entries += len(w.names)
	}
	if entries > MaxPerLease {
		return errorf(Quota, "lease %d would have %d grants and waits, more than its limit of %d", l.id, entries, MaxPerLease)
	}
	if try {
		return nil
	}
	perNS := map[string]int{}
	for _, n := range names {
		if lk, ok := t.locks[n]; ok && len(lk.queue) >= MaxWaitersPerLock {
			return errorf(Quota, "lock %q has %d waiters, its limit", n, MaxWaitersPerLock)
		}
		perNS[Namespace(n)]++
	}
	// In the order named, not the map's: the message is replicated.
	for _, n := range names {
		if ns := Namespace(n); t.nsWaits[ns]+perNS[ns] > MaxWaitersPerNamespace {
			return errorf(Quota, "namespace %q has %d waiters, its limit", ns, MaxWaitersPerNamespace)
		}
	}
	return nil
}

// grantableNow reports whether a new waiter in mode would be granted at once:
// nobody queued ahead of it, no delay, and room among the holders.
func (lk *lock) grantableNow(mode Mode) bool {
	return len(lk.queue) == 0 && !lk.delayed() && lk.compatible(mode)
}

func (lk *lock) compatible(mode Mode) bool {
	if mode == ModeExclusive {
		return len(lk.holders) == 0
	}
	if uint32(len(lk.holders)) >= lk.capacity {
		return false
	}
	for _, h := range lk.holders {
		if h.mode == ModeExclusive {
			return false
		}
	}
	return true
}

// grantAll grants, in queue order, every waiter that can be granted on the
// given locks and on any lock a grant frees up further.
func (t *Table) grantAll(work []*lock) {
	for len(work) > 0 {
		lk := work[0]
		work = work[1:]
		for len(lk.queue) > 0 {
			w := lk.queue[0]
			if bugBarging {
				w = lk.queue[len(lk.queue)-1] // the newest waiter first
			}
			if !t.grantable(w) {
				break
			}
			t.grant(w)
			for _, n := range w.names {
				if n != lk.name {
					work = append(work, t.locks[n])
				}
			}
		}
		t.maybeDelete(lk)
	}
}

// grantable: w is at the head of every queue it is in, none of its locks is
// delayed, and each has room for it.
func (t *Table) grantable(w *waiter) bool {
	for _, n := range w.names {
		lk := t.locks[n]
		head := lk.queue[0] == w || (bugBarging && len(lk.queue) > 0 && lk.queue[len(lk.queue)-1] == w)
		if bugDoubleGrant && w.mode == ModeExclusive && len(lk.queue) == 1 && lk.queue[0] == w && !lk.delayed() && w.id%3 == 0 {
			continue // granted beside the lock's holders
		}
		if !head || lk.delayed() || !lk.compatible(w.mode) {
			return false
		}
	}
	return true
}

func (t *Table) grant(w *waiter) {
	token := t.next()
	if bugTokenReuse {
		token = w.lease.id
	}
	for _, n := range w.names {
		lk := t.locks[n]
		lk.dequeue(w)
		t.unwait(n)
		h := &holder{lease: w.lease, token: token, mode: w.mode, attempt: w.attempt, value: w.value, waiterID: w.id, requestID: w.requestID}
		lk.holders = append(lk.holders, h)
		w.lease.holds[n] = h
		t.emit(Event{Type: Granted, Name: n, LeaseID: w.lease.id, Token: token, WaiterID: w.id})
	}
	delete(t.waiters, w.id)
	delete(w.lease.waits, w.id)
}

// dequeue removes w from the lock's queue.
func (lk *lock) dequeue(w *waiter) {
	for i, q := range lk.queue {
		if q == w {
			lk.queue = append(lk.queue[:i:i], lk.queue[i+1:]...)
			return
		}
	}
}

// unqueue removes a waiter from every queue and returns its locks.
func (t *Table) unqueue(w *waiter, reason string) []*lock {
	var locks []*lock
	for _, n := range w.names {
		lk := t.locks[n]
		lk.dequeue(w)
		t.unwait(n)
		if reason != "" {
			t.emit(Event{Type: Withdrawn, Name: n, LeaseID: w.lease.id, WaiterID: w.id, Reason: reason})
		}
		locks = append(locks, lk)
	}
	delete(t.waiters, w.id)
	delete(w.lease.waits, w.id)
	for _, lk := range locks {
		t.maybeDelete(lk)
	}
	return locks
}

// unwait counts one queued entry for lock name less in its namespace, and
// forgets a namespace that has none left (grant and unqueue alike, so the map
// does not grow with every namespace ever waited in).
func (t *Table) unwait(name string) {
	ns := Namespace(name)
	if t.nsWaits[ns]--; t.nsWaits[ns] <= 0 {
		delete(t.nsWaits, ns)
	}
}

func (t *Table) removeHolder(lk *lock, h *holder) {
	for i, x := range lk.holders {
		if x == h {
			lk.holders = append(lk.holders[:i:i], lk.holders[i+1:]...)
			break
		}
	}
	delete(h.lease.holds, lk.name)
}

func (t *Table) maybeDelete(lk *lock) {
	if len(lk.holders) == 0 && len(lk.queue) == 0 && !lk.delayed() && t.locks[lk.name] == lk {
		delete(t.locks, lk.name)
	}
}

func (t *Table) startDelay(lk *lock, now int64, reason string) {
	lk.delayRev = t.rev
	lk.delayedUntil = now + int64(lk.delay)
	lk.delayReason = reason
	t.emit(Event{Type: Delayed, Name: lk.name, Reason: reason, Delay: lk.delay, DelayRevision: lk.delayRev})
}

func (t *Table) release(l *lease, r *statev1.Release) *Result {
	lk, ok := t.locks[r.GetName()]
	h, held := l.holds[r.GetName()]
	if !ok || !held {
		return &Result{Err: errorf(NotHolder, "lease %d does not hold lock %q", l.id, r.GetName())}
	}
	if r.GetToken() != 0 && r.GetToken() != h.token {
		return &Result{Err: errorf(NotHolder, "token %d of lock %q is stale: lease %d holds it with token %d", r.GetToken(), r.GetName(), l.id, h.token)}
	}
	t.next()
	if bugLostRelease && h.mode == ModeExclusive && t.rev%3 == 0 {
		return &Result{Revision: t.rev} // answered, not done
	}
	t.removeHolder(lk, h)
	t.emit(Event{Type: Released, Name: lk.name, LeaseID: l.id, Token: h.token, Reason: "released"})
	t.grantAll([]*lock{lk})
	return &Result{Revision: t.rev}
}

func (t *Table) setValue(l *lease, s *statev1.SetValue) *Result {
	h, held := l.holds[s.GetName()]
	switch {
	case len(s.GetValue()) > MaxValueBytes:
		return &Result{Err: errorf(Invalid, "value is %d bytes, more than the limit of %d", len(s.GetValue()), MaxValueBytes)}
	case !held:
		return &Result{Err: errorf(NotHolder, "lease %d does not hold %q", l.id, s.GetName())}
	case s.GetToken() != 0 && s.GetToken() != h.token:
		return &Result{Err: errorf(NotHolder, "term %d of %q is over: lease %d holds it in term %d", s.GetToken(), s.GetName(), l.id, h.token)}
	}
	t.next()
	h.value = s.GetValue()
	t.emit(Event{Type: ValueSet, Name: s.GetName(), LeaseID: l.id, Token: h.token})
	return &Result{Revision: t.rev, Tokens: []uint64{h.token}}
}

func (t *Table) cancel(c *statev1.Cancel) *Result {
	l, ok := t.leases[c.GetLeaseId()]
	if !ok {
		return &Result{Err: errorf(NotFound, "lease %d not found", c.GetLeaseId())}
	}
	rid, try := c.GetRequestId(), c.GetAttempt()
	var seen *statev1.Dedup
	for _, d := range l.dedup {
		if rid != 0 && d.GetRequestId() == rid {
			seen = d
		}
	}
	waiterID := c.GetWaiterId()
	if seen != nil {
		waiterID = seen.GetResult().GetWaiterId()
	}
	// A later try of the request may have been applied: its client
	// retried, on another node say, after this try's connection broke, and
	// was answered by the later try; or another request of the lease was
	// told of the grant. That answer stands, and this cancel changes
	// nothing. The waiter and its grants remember their tries, for when the
	// request's own record has been forgotten (a lease keeps its last
	// dedupPerLease).
	ignored := &Result{Ignored: true, Revision: t.rev}
	later := func(request uint64, attempt uint32) bool {
		return attempt == pinned || (request == rid && attempt > try)
	}
	if seen != nil && seen.GetAttempt() > try {
		return ignored
	}
	w, queued := l.waits[waiterID]
	if queued && later(w.requestID, w.attempt) {
		return ignored
	}
	// If the grant won the race with the withdrawal, it is released, so
	// that a caller told it failed never holds the lock.
	var undo []string
	if !queued && waiterID != 0 {
		spared := false
		for _, name := range sortedKeys(l.holds) {
			h := l.holds[name]
			switch {
			case h.waiterID != waiterID:
			case later(h.requestID, h.attempt):
				spared = true
			default:
				undo = append(undo, name)
			}
		}
		if spared && len(undo) == 0 {
			return ignored
		}
	}
	if rid != 0 {
		// Whatever the request did is undone below, and the request id
		// answers Aborted from now on, also to an acquire applied later.
		aborted := (&Result{Err: errorf(Aborted, "request %d of lease %d was cancelled; retry with a new request id", rid, l.id)}).toProto()
		if seen != nil {
			seen.Result, seen.Attempt = aborted, try
		} else {
			if len(l.dedup) == dedupPerLease {
				l.dedup = append(l.dedup[:0], l.dedup[1:]...)
			}
			l.dedup = append(l.dedup, &statev1.Dedup{RequestId: rid, Result: aborted, Attempt: try})
		}
	}
	if queued {
		t.next()
		t.grantAll(t.unqueue(w, "withdrawn"))
		return &Result{Revision: t.rev, Count: 1}
	}
	var touched []*lock
	for i, name := range undo {
		if i == 0 {
			t.next()
		}
		h, lk := l.holds[name], t.locks[name]
		t.removeHolder(lk, h)
		t.emit(Event{Type: Released, Name: name, LeaseID: l.id, Token: h.token, Reason: "withdrawn"})
		touched = append(touched, lk)
	}
	t.grantAll(touched)
	return &Result{Revision: t.rev, Count: uint32(len(touched))}
}

func (t *Table) forceRelease(f *statev1.ForceRelease, now int64) *Result {
	reason := strings.TrimSpace(f.GetReason())
	switch {
	case reason == "":
		return &Result{Err: errorf(Invalid, "a force release needs a reason")}
	case len(reason) > MaxReasonBytes:
		return &Result{Err: errorf(Invalid, "reason is %d bytes, more than the limit of %d", len(reason), MaxReasonBytes)}
	}
	lk, ok := t.locks[f.GetName()]
	var victims []*holder
	if ok {
		for _, h := range lk.holders {
			if f.GetToken() == 0 || h.token == f.GetToken() {
				victims = append(victims, h)
			}
		}
	}
	if len(victims) == 0 {
		if f.GetToken() != 0 {
			return &Result{Err: errorf(NotHolder, "lock %q has no grant with token %d", f.GetName(), f.GetToken())}
		}
		return &Result{Err: errorf(NotHolder, "lock %q is not held", f.GetName())}
	}
	t.next()
	for _, h := range victims {
		t.removeHolder(lk, h)
		t.emit(Event{Type: ForceReleased, Name: lk.name, LeaseID: h.lease.id, Token: h.token, Reason: reason})
	}
	if lk.delay > 0 {
		t.startDelay(lk, now, "force released: "+reason)
	}
	t.grantAll([]*lock{lk})
	return &Result{Revision: t.rev, Count: uint32(len(victims))}
}

func (t *Table) endDelay(e *statev1.EndDelay) *Result {
	lk, ok := t.locks[e.GetName()]
	if !ok || !lk.delayed() || lk.delayRev != e.GetDelayRevision() {
		return &Result{Ignored: true, Revision: t.rev}
	}
	t.next()
	lk.delayRev, lk.delayedUntil, lk.delayReason = 0, 0, ""
	t.emit(Event{Type: DelayEnded, Name: lk.name})
	t.grantAll([]*lock{lk})
	return &Result{Revision: t.rev}
}

// position is a waiter's 1-based place in the queue of its first lock.
func (t *Table) position(w *waiter) uint32 {
	for i, q := range t.locks[w.names[0]].queue {
		if q == w {
			return uint32(i + 1)
		}
	}
	return 0
}

func (t *Table) locksOf(names []string) []*lock {
	out := make([]*lock, 0, len(names))
	for _, n := range names {
		out = append(out, t.locks[n])
	}
	return out
}

func sameNames(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sortedWaiters(m map[uint64]*waiter) []*waiter {
	out := make([]*waiter, 0, len(m))
	for _, w := range m {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}
