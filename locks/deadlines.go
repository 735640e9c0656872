package locks

import (
	"container/heap"
	"time"
)

// Deadlines is the leader's bookkeeping of lease deadlines. It is pure: the
// caller passes the time (a monotonic clock reading) to every method. The
// leader restarts every deadline at now+TTL when it takes office, moves one
// on each keep-alive, and proposes the expiry of what Expired returns.
type Deadlines struct {
	h   deadlineHeap
	idx map[uint64]*deadline
}

type deadline struct {
	id  uint64
	ttl time.Duration
	at  time.Time
	i   int // index in the heap
}

// NewDeadlines returns an empty tracker.
func NewDeadlines() *Deadlines { return &Deadlines{idx: map[uint64]*deadline{}} }

// Reset forgets everything and sets every given lease's deadline to now+TTL.
func (d *Deadlines) Reset(leases []LeaseTTL, now time.Time) {
	d.h = d.h[:0]
	d.idx = make(map[uint64]*deadline, len(leases))
	for _, l := range leases {
		if _, dup := d.idx[l.ID]; dup {
			continue
		}
		e := &deadline{id: l.ID, ttl: l.TTL, at: now.Add(l.TTL), i: len(d.h)}
		d.h = append(d.h, e)
		d.idx[l.ID] = e
	}
	heap.Init(&d.h)
}

// Add starts tracking a lease at now+ttl, or restarts it if tracked.
func (d *Deadlines) Add(id uint64, ttl time.Duration, now time.Time) {
	if e, ok := d.idx[id]; ok {
		e.ttl, e.at = ttl, now.Add(ttl)
		heap.Fix(&d.h, e.i)
		return
	}
	e := &deadline{id: id, ttl: ttl, at: now.Add(ttl)}
	heap.Push(&d.h, e)
	d.idx[id] = e
}

// KeepAlive moves a tracked lease's deadline to now+TTL, unless it is
// later already (keep-alives answered out of order never shorten a lease),
// and returns the TTL; ok is false for a lease it does not track.
func (d *Deadlines) KeepAlive(id uint64, now time.Time) (ttl time.Duration, ok bool) {
	e, ok := d.idx[id]
	if !ok {
		return 0, false
	}
	if at := now.Add(e.ttl); at.After(e.at) {
		e.at = at
		heap.Fix(&d.h, e.i)
	}
	return e.ttl, true
}

// Remaining is how long until a tracked lease's deadline.
func (d *Deadlines) Remaining(id uint64, now time.Time) (time.Duration, bool) {
	e, ok := d.idx[id]
	if !ok {
		return 0, false
	}
	return e.at.Sub(now), true
}

// Remove stops tracking a lease.
func (d *Deadlines) Remove(id uint64) {
	if e, ok := d.idx[id]; ok {
		heap.Remove(&d.h, e.i)
		delete(d.idx, id)
	}
}

// Expired returns up to max leases whose deadline is not after now, in no
// particular order. They stay tracked until removed, so an expiry that fails to commit
// is proposed again.
func (d *Deadlines) Expired(now time.Time, max int) []uint64 {
	var out []uint64
	// Walk the heap in order without popping: a small DFS over the nodes
	// that are due.
	stack := []int{0}
	for len(stack) > 0 && len(out) < max {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if i >= len(d.h) || d.h[i].at.After(now) {
			continue
		}
		out = append(out, d.h[i].id)
		stack = append(stack, 2*i+1, 2*i+2)
	}
	return out
}

// Len is the number of tracked leases.
func (d *Deadlines) Len() int { return len(d.h) }

type deadlineHeap []*deadline

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h deadlineHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].i, h[j].i = i, j
}
func (h *deadlineHeap) Push(x any) {
	e := x.(*deadline)
	e.i = len(*h)
	*h = append(*h, e)
}
func (h *deadlineHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
