package locks

// WaiterState is where an acquire that queued stands now.
type WaiterState int

// The waiter states.
const (
	// WaiterGone: neither waiting nor holding (withdrawn, or its lease ended).
	WaiterGone WaiterState = iota
	WaiterQueued
	// WaiterGranted: the lease holds the locks the waiter was granted.
	WaiterGranted
)

// Waiter reports what became of a queued acquire of lease: still queued,
// granted (with one token per lock, in the order they were named), or gone.
func (t *Table) Waiter(leaseID, waiterID uint64) (state WaiterState, tokens []uint64, position uint32) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	l, ok := t.leases[leaseID]
	if !ok {
		return WaiterGone, nil, 0
	}
	if w, ok := l.waits[waiterID]; ok {
		return WaiterQueued, nil, t.position(w)
	}
	for _, h := range l.holds {
		if h.waiterID == waiterID {
			tokens = append(tokens, h.token)
		}
	}
	if len(tokens) == 0 {
		return WaiterGone, nil, 0
	}
	// Every lock of one waiter is granted with the same token.
	return WaiterGranted, tokens, 0
}
