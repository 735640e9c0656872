package nemesis

import (
	"fmt"
	"sort"
	"time"
)

// Hold is one grant as its holder saw it: from the moment its acquire
// returned to the moment it called release or saw the grant lost. Times are
// since the start of the run, on the test process's monotonic clock.
type Hold struct {
	Lock      string
	Lease     uint64
	Token     uint64
	Exclusive bool // false for a shared hold (semaphore slot, reader)
	Capacity  int
	Start     time.Duration
	End       time.Duration
}

// CheckMutualExclusion reports holds that overlap in time where the lock's
// rules forbid it: an exclusive hold beside any other hold, or more shared
// holds than the lock's capacity.
func CheckMutualExclusion(holds []Hold) []string {
	var anomalies []string
	for lock, hs := range byLock(holds) {
		for i := range hs {
			for j := i + 1; j < len(hs) && hs[j].Start < hs[i].End; j++ {
				a, b := hs[i], hs[j]
				if a.Token == b.Token || !(a.Exclusive || b.Exclusive) {
					continue
				}
				anomalies = append(anomalies, fmt.Sprintf("%s: lease %d (token %d, %v–%v) and lease %d (token %d, %v–%v) held it together",
					lock, a.Lease, a.Token, a.Start, a.End, b.Lease, b.Token, b.Start, b.End))
			}
		}
		// Shared holds: never more at once than the capacity.
		type edge struct {
			at    time.Duration
			delta int
		}
		var edges []edge
		capacity := 0
		for _, h := range hs {
			if !h.Exclusive {
				edges = append(edges, edge{h.Start, 1}, edge{h.End, -1})
				capacity = h.Capacity
			}
		}
		sort.Slice(edges, func(i, j int) bool {
			if edges[i].at != edges[j].at {
				return edges[i].at < edges[j].at
			}
			return edges[i].delta < edges[j].delta // an end before a start at the same instant
		})
		n := 0
		for _, e := range edges {
			n += e.delta
			if capacity > 0 && n > capacity {
				anomalies = append(anomalies, fmt.Sprintf("%s: %d shared holders at %v, capacity %d", lock, n, e.at, capacity))
				break
			}
		}
	}
	sort.Strings(anomalies)
	return anomalies
}

// CheckTokens reports fencing tokens that do not strictly increase, per
// exclusive lock, in the order the holds began (a later hold of the same
// grant, by the same lease with the same token, is a re-acquire).
func CheckTokens(holds []Hold) []string {
	var anomalies []string
	for lock, hs := range byLock(holds) {
		var prev *Hold
		for i := range hs {
			h := &hs[i]
			if !h.Exclusive {
				continue
			}
			if prev != nil && h.Token <= prev.Token && !(h.Token == prev.Token && h.Lease == prev.Lease) {
				anomalies = append(anomalies, fmt.Sprintf("%s: token %d (lease %d, from %v) does not exceed token %d (lease %d, from %v) granted before it",
					lock, h.Token, h.Lease, h.Start, prev.Token, prev.Lease, prev.Start))
			}
			prev = h
		}
	}
	sort.Strings(anomalies)
	return anomalies
}

func byLock(holds []Hold) map[string][]Hold {
	out := map[string][]Hold{}
	for _, h := range holds {
		out[h.Lock] = append(out[h.Lock], h)
	}
	for _, hs := range out {
		sort.Slice(hs, func(i, j int) bool { return hs[i].Start < hs[j].Start })
	}
	return out
}

// Expiry is a lease a client abandoned: it stopped keeping it alive after
// the keep-alive it sent at LastAckSent was acknowledged, and saw it gone
// (a linearizable read answered NotFound) at SeenGone.
type Expiry struct {
	Lease       uint64
	TTL         time.Duration
	LastAckSent time.Duration
	SeenGone    time.Duration
}

// CheckExpiries reports leases that were gone before TTL had passed since the
// last acknowledged keep-alive was sent, and, as a liveness anomaly, leases
// still there long after (TTL plus slack).
func CheckExpiries(es []Expiry, slack time.Duration) []string {
	var anomalies []string
	for _, e := range es {
		if e.SeenGone < e.LastAckSent+e.TTL {
			anomalies = append(anomalies, fmt.Sprintf("lease %d (TTL %v) expired early: gone at %v, %v after the keep-alive sent at %v",
				e.Lease, e.TTL, e.SeenGone, e.SeenGone-e.LastAckSent, e.LastAckSent))
		}
		if e.SeenGone > e.LastAckSent+e.TTL+slack {
			anomalies = append(anomalies, fmt.Sprintf("lease %d (TTL %v) expired late: gone only %v after its last keep-alive", e.Lease, e.TTL, e.SeenGone-e.LastAckSent))
		}
	}
	return anomalies
}

// QueueEvent is one event of a lock's queue as a watcher saw it: Kind is
// "state" (Queue holds the waiters' leases in order), "queued", "withdrawn"
// or "granted".
type QueueEvent struct {
	Kind     string
	Lease    uint64
	Revision uint64
	Queue    []uint64
}

// CheckFIFO reports grants of an exclusive lock that overtook an earlier
// waiter: every grant must go to the head of the queue, or, for a try that
// never queued, to a lock nobody waits for.
func CheckFIFO(lock string, events []QueueEvent) []string {
	var anomalies []string
	var queue []uint64
	synced := false
	for _, e := range events {
		switch e.Kind {
		case "state":
			queue, synced = append([]uint64(nil), e.Queue...), true
		case "queued":
			queue = append(queue, e.Lease)
		case "withdrawn":
			queue = remove(queue, e.Lease)
		case "granted":
			if synced && len(queue) > 0 && queue[0] != e.Lease {
				anomalies = append(anomalies, fmt.Sprintf("%s: revision %d granted lease %d; the head of the queue was lease %d (queue %v)",
					lock, e.Revision, e.Lease, queue[0], queue[:min(4, len(queue))]))
			}
			queue = remove(queue, e.Lease)
		}
	}
	return anomalies
}

func remove(q []uint64, lease uint64) []uint64 {
	for i, l := range q {
		if l == lease {
			return append(q[:i:i], q[i+1:]...)
		}
	}
	return q
}
