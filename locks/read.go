package locks

import (
	"sort"
	"strings"
	"time"
)

// LockInfo describes one lock.
type LockInfo struct {
	Name     string
	Capacity uint32
	Delay    time.Duration
	// DelayedUntil is when the current lock-delay ends by the proposer's
	// wall clock (Unix nanoseconds), 0 if none; DelayReason says why.
	DelayedUntil  int64
	DelayReason   string
	DelayRevision uint64
	Holders       []HolderInfo
	Waiters       []WaiterInfo // in queue order
}

// HolderInfo is one grant.
type HolderInfo struct {
	LeaseID uint64
	Owner   string
	Token   uint64
	Mode    Mode
	Value   []byte
}

// WaiterInfo is one queued acquire.
type WaiterInfo struct {
	ID      uint64 // the revision at which it queued
	LeaseID uint64
	Owner   string
	Mode    Mode
	Names   []string
}

// LeaseInfo describes one lease.
type LeaseInfo struct {
	ID         uint64
	TTL        time.Duration
	Owner      string
	Principal  string // who granted it; "" without authentication
	GrantedRev uint64
	Held       []HolderRef
	Waiting    []string
}

// HolderRef names one lock a lease holds.
type HolderRef struct {
	Name  string
	Token uint64
	Mode  Mode
}

func (t *Table) describe(lk *lock) LockInfo {
	info := LockInfo{
		Name:          lk.name,
		Capacity:      lk.capacity,
		Delay:         lk.delay,
		DelayedUntil:  lk.delayedUntil,
		DelayReason:   lk.delayReason,
		DelayRevision: lk.delayRev,
	}
	for _, h := range lk.holders {
		info.Holders = append(info.Holders, HolderInfo{LeaseID: h.lease.id, Owner: h.lease.owner, Token: h.token, Mode: h.mode, Value: h.value})
	}
	for _, w := range lk.queue {
		info.Waiters = append(info.Waiters, WaiterInfo{ID: w.id, LeaseID: w.lease.id, Owner: w.lease.owner, Mode: w.mode, Names: w.names})
	}
	return info
}

// Describe returns a lock's state and the table's revision. A lock with no
// holders, waiters or delay does not exist; ok is false then.
func (t *Table) Describe(name string) (info LockInfo, rev uint64, ok bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	lk, ok := t.locks[name]
	if !ok {
		return LockInfo{Name: name}, t.rev, false
	}
	return t.describe(lk), t.rev, true
}

// Exists reports whether the lock has holders, waiters or a delay.
func (t *Table) Exists(name string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	_, ok := t.locks[name]
	return ok
}

// Holders returns a lock's holders, without the cost of copying its queue.
func (t *Table) Holders(name string) []HolderInfo {
	t.mu.RLock()
	defer t.mu.RUnlock()
	lk, ok := t.locks[name]
	if !ok {
		return nil
	}
	hs := make([]HolderInfo, 0, len(lk.holders))
	for _, h := range lk.holders {
		hs = append(hs, HolderInfo{LeaseID: h.lease.id, Owner: h.lease.owner, Token: h.token, Mode: h.mode, Value: h.value})
	}
	return hs
}

// List returns up to limit locks whose names start with prefix and sort
// after after, in name order, and whether more follow.
func (t *Table) List(prefix, after string, limit int) (infos []LockInfo, rev uint64, more bool) {
	limit = max(limit, 0)
	t.mu.RLock()
	defer t.mu.RUnlock()
	var names []string
	for name := range t.locks {
		if strings.HasPrefix(name, prefix) && name > after {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	if len(names) > limit {
		names, more = names[:limit], true
	}
	for _, n := range names {
		infos = append(infos, t.describe(t.locks[n]))
	}
	return infos, t.rev, more
}

// CheckFence reports whether token is the token of a current holder of the
// lock.
func (t *Table) CheckFence(name string, token uint64) (valid bool, rev uint64) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if lk, ok := t.locks[name]; ok {
		for _, h := range lk.holders {
			if h.token == token {
				return true, t.rev
			}
		}
	}
	return false, t.rev
}

// Lease describes a lease.
func (t *Table) Lease(id uint64) (LeaseInfo, bool) {
	info, _, ok := t.LeaseAt(id)
	return info, ok
}

// LeaseAt describes a lease and returns the revision the description is of.
func (t *Table) LeaseAt(id uint64) (LeaseInfo, uint64, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	info, ok := t.lease(id)
	return info, t.rev, ok
}

func (t *Table) lease(id uint64) (LeaseInfo, bool) {
	l, ok := t.leases[id]
	if !ok {
		return LeaseInfo{}, false
	}
	info := LeaseInfo{ID: l.id, TTL: l.ttl, Owner: l.owner, Principal: l.principal, GrantedRev: l.grantedRev}
	for _, n := range sortedKeys(l.holds) {
		h := l.holds[n]
		info.Held = append(info.Held, HolderRef{Name: n, Token: h.token, Mode: h.mode})
	}
	for _, w := range sortedWaiters(l.waits) {
		info.Waiting = append(info.Waiting, w.names...)
	}
	return info, true
}

// Leases returns up to limit leases with ids above after, in id order, and
// whether more follow.
func (t *Table) Leases(after uint64, limit int) (infos []LeaseInfo, more bool) {
	t.mu.RLock()
	var ids []uint64
	for id := range t.leases {
		if id > after {
			ids = append(ids, id)
		}
	}
	t.mu.RUnlock()
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	if len(ids) > max(limit, 0) {
		ids, more = ids[:max(limit, 0)], true
	}
	for _, id := range ids {
		if info, ok := t.Lease(id); ok {
			infos = append(infos, info)
		}
	}
	return infos, more
}

// LeaseTTL is a lease's id and TTL.
type LeaseTTL struct {
	ID  uint64
	TTL time.Duration
}

// LeaseTTLs lists every lease, for a new leader to restart their deadlines.
func (t *Table) LeaseTTLs() []LeaseTTL {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]LeaseTTL, 0, len(t.leases))
	for _, l := range t.leases {
		out = append(out, LeaseTTL{ID: l.id, TTL: l.ttl})
	}
	return out
}

// DelayedLock is a lock in a lock-delay.
type DelayedLock struct {
	Name          string
	Delay         time.Duration
	DelayRevision uint64
}

// DelayedLocks lists the locks in a lock-delay, for a new leader to
// schedule their ends.
func (t *Table) DelayedLocks() []DelayedLock {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var out []DelayedLock
	for _, lk := range t.locks {
		if lk.delayed() {
			out = append(out, DelayedLock{Name: lk.name, Delay: lk.delay, DelayRevision: lk.delayRev})
		}
	}
	return out
}

// Stats counts what the table holds.
type Stats struct {
	Revision              uint64
	Leases, Locks, Grants int
	Waiters               int
}

// Stats counts the table's contents.
func (t *Table) Stats() Stats {
	t.mu.RLock()
	defer t.mu.RUnlock()
	s := Stats{Revision: t.rev, Leases: len(t.leases), Locks: len(t.locks), Waiters: len(t.waiters)}
	for _, l := range t.leases {
		s.Grants += len(l.holds)
	}
	return s
}

// NamespaceStats counts one namespace's locks: those that exist, their
// grants, and the waiters queued on them.
type NamespaceStats struct {
	Locks, Grants, Waiters int
}

// Namespaces counts the locks of every namespace (the first segment of
// their names). It walks every lock: call it at the pace of a metrics
// scrape, not per request.
func (t *Table) Namespaces() map[string]NamespaceStats {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := map[string]NamespaceStats{}
	for _, lk := range t.locks {
		ns := Namespace(lk.name)
		s := out[ns]
		s.Locks++
		s.Grants += len(lk.holders)
		s.Waiters += len(lk.queue)
		out[ns] = s
	}
	return out
}

// LeasePrincipal is the principal that granted a lease.
func (t *Table) LeasePrincipal(id uint64) (principal string, ok bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	l, ok := t.leases[id]
	if !ok {
		return "", false
	}
	return l.principal, true
}
