package locks

import (
	"fmt"
	"sort"
	"time"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	"google.golang.org/protobuf/proto"
)

// Snapshot encodes the whole table. The encoding is deterministic: equal
// tables give equal bytes.
func (t *Table) Snapshot() ([]byte, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	s := &statev1.Snapshot{Revision: t.rev, Term: t.term}
	for _, l := range t.leases {
		s.Leases = append(s.Leases, &statev1.Lease{Id: l.id, TtlMs: l.ttl.Milliseconds(), Owner: l.owner, GrantedRevision: l.grantedRev, Dedup: l.dedup})
	}
	sort.Slice(s.Leases, func(i, j int) bool { return s.Leases[i].Id < s.Leases[j].Id })
	for _, name := range sortedKeys(t.locks) {
		lk := t.locks[name]
		pl := &statev1.Lock{Name: lk.name, Capacity: lk.capacity, LockDelayMs: lk.delay.Milliseconds(),
			DelayedUntilUnixNano: lk.delayedUntil, DelayReason: lk.delayReason, DelayRevision: lk.delayRev}
		for _, h := range lk.holders {
			pl.Holders = append(pl.Holders, &statev1.Holder{LeaseId: h.lease.id, Token: h.token, Mode: int32(h.mode), Value: h.value, WaiterId: h.waiterID})
		}
		for _, w := range lk.queue {
			pl.Queue = append(pl.Queue, w.id)
		}
		s.Locks = append(s.Locks, pl)
	}
	for _, w := range t.waiters {
		s.Waiters = append(s.Waiters, &statev1.Waiter{Id: w.id, LeaseId: w.lease.id, Names: w.names, Mode: int32(w.mode), Value: w.value, RequestId: w.requestID})
	}
	sort.Slice(s.Waiters, func(i, j int) bool { return s.Waiters[i].Id < s.Waiters[j].Id })
	return proto.MarshalOptions{Deterministic: true}.Marshal(s)
}

// Restore replaces the table with a snapshot's contents. On error the table
// is unchanged.
func (t *Table) Restore(data []byte) error {
	s := new(statev1.Snapshot)
	if err := proto.Unmarshal(data, s); err != nil {
		return fmt.Errorf("locks: decoding snapshot: %w", err)
	}
	n := NewTable()
	n.rev, n.term = s.GetRevision(), s.GetTerm()
	for _, pl := range s.GetLeases() {
		n.leases[pl.GetId()] = &lease{id: pl.GetId(), ttl: time.Duration(pl.GetTtlMs()) * time.Millisecond, owner: pl.GetOwner(),
			grantedRev: pl.GetGrantedRevision(), holds: map[string]*holder{}, waits: map[uint64]*waiter{}, dedup: pl.GetDedup()}
	}
	for _, pw := range s.GetWaiters() {
		l, ok := n.leases[pw.GetLeaseId()]
		if !ok {
			return fmt.Errorf("locks: snapshot waiter %d of unknown lease %d", pw.GetId(), pw.GetLeaseId())
		}
		w := &waiter{id: pw.GetId(), lease: l, names: pw.GetNames(), mode: Mode(pw.GetMode()), value: pw.GetValue(), requestID: pw.GetRequestId()}
		n.waiters[w.id] = w
		l.waits[w.id] = w
	}
	for _, pl := range s.GetLocks() {
		lk := &lock{name: pl.GetName(), capacity: pl.GetCapacity(), delay: time.Duration(pl.GetLockDelayMs()) * time.Millisecond,
			delayedUntil: pl.GetDelayedUntilUnixNano(), delayReason: pl.GetDelayReason(), delayRev: pl.GetDelayRevision()}
		for _, ph := range pl.GetHolders() {
			l, ok := n.leases[ph.GetLeaseId()]
			if !ok {
				return fmt.Errorf("locks: snapshot holder of %q has unknown lease %d", lk.name, ph.GetLeaseId())
			}
			h := &holder{lease: l, token: ph.GetToken(), mode: Mode(ph.GetMode()), value: ph.GetValue(), waiterID: ph.GetWaiterId()}
			lk.holders = append(lk.holders, h)
			l.holds[lk.name] = h
		}
		for _, id := range pl.GetQueue() {
			w, ok := n.waiters[id]
			if !ok {
				return fmt.Errorf("locks: snapshot queue of %q has unknown waiter %d", lk.name, id)
			}
			lk.queue = append(lk.queue, w)
			n.nsWaits[Namespace(lk.name)]++
		}
		n.locks[lk.name] = lk
	}
	t.mu.Lock()
	t.rev, t.term = n.rev, n.term
	t.leases, t.locks, t.waiters, t.nsWaits = n.leases, n.locks, n.waiters, n.nsWaits
	t.events = nil
	observer := t.observer
	t.mu.Unlock()
	if observer != nil {
		observer([]Event{{Type: Reset, Revision: n.rev}})
	}
	return nil
}
