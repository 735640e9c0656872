package server

import (
	"sync"

	"github.com/lockd-io/lockd/locks"
)

// hub fans the lock table's events out to the requests waiting on them:
// blocked Acquires and Campaigns, lease event streams, Watch and Observe. It
// keeps the most recent events so a watcher can resume from a revision.
//
// publish runs on the raft loop, so it never blocks: a subscriber whose
// buffer is full is cut off (its stream ends and the client resumes).
type hub struct {
	mu    sync.Mutex
	ring  []locks.Event // the last len(ring) events, oldest first once full
	start int           // index of the oldest event in ring
	subs  map[*subscription]struct{}
	// byLease indexes the subscribers to one lease's events (blocked
	// acquires, lease event streams), so that publishing an event costs
	// the subscribers it may concern, not every request in flight.
	byLease map[uint64]map[*subscription]struct{}
}

const (
	hubHistory = 1 << 16
	// subBuffer is a stream's buffer (Watch, Observe): deep, so that a
	// burst does not cut a slow reader off.
	subBuffer = 1024
	// leaseSubBuffer is the buffer of a stream of one lease's events
	// (LeaseService.Events).
	leaseSubBuffer = 64
	// acquireSubBuffer is the buffer of an acquire waiting for its grant: it
	// needs one event, and one that misses some because its lease had a
	// burst is cut off and looks at the table instead. Every acquire makes
	// one, so it is small: at 64 it was a fifth of the leader's allocation.
	acquireSubBuffer = 4
)

type subscription struct {
	h     *hub
	lease uint64 // the lease whose events these are, 0 for any
	match func(locks.Event) bool
	c     chan locks.Event
	// lost is closed when the subscriber fell behind and was dropped.
	lost chan struct{}
}

func newHub() *hub {
	return &hub{
		ring:    make([]locks.Event, 0, hubHistory),
		subs:    map[*subscription]struct{}{},
		byLease: map[uint64]map[*subscription]struct{}{},
	}
}

func (h *hub) publish(events []locks.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range events {
		if e.Type == locks.Reset {
			// The table jumped to a snapshot: the history has a hole, so
			// forget it, and cut every subscriber off to look at the table
			// afresh.
			h.ring, h.start = h.ring[:0], 0
			for s := range h.subs {
				h.cutOff(s)
			}
			for _, subs := range h.byLease {
				for s := range subs {
					h.cutOff(s)
				}
			}
			continue
		}
		if len(h.ring) < hubHistory {
			h.ring = append(h.ring, e)
		} else {
			h.ring[h.start] = e
			h.start = (h.start + 1) % hubHistory
		}
		for s := range h.subs {
			h.offer(s, e)
		}
		if e.LeaseID != 0 {
			for s := range h.byLease[e.LeaseID] {
				h.offer(s, e)
			}
		}
	}
}

// offer hands e to s if it matches, cutting s off if its buffer is full.
func (h *hub) offer(s *subscription, e locks.Event) {
	if !s.match(e) {
		return
	}
	select {
	case s.c <- e:
	default:
		h.cutOff(s)
	}
}

func (h *hub) cutOff(s *subscription) {
	close(s.lost)
	h.remove(s)
}

func (h *hub) remove(s *subscription) {
	if s.lease == 0 {
		delete(h.subs, s)
		return
	}
	if subs := h.byLease[s.lease]; subs != nil {
		delete(subs, s)
		if len(subs) == 0 {
			delete(h.byLease, s.lease)
		}
	}
}

// subscribeLease registers a subscriber to events of one lease that match.
func (h *hub) subscribeLease(lease uint64, buffer int, match func(locks.Event) bool) *subscription {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := &subscription{h: h, lease: lease, match: match, c: make(chan locks.Event, buffer), lost: make(chan struct{})}
	subs := h.byLease[lease]
	if subs == nil {
		subs = map[*subscription]struct{}{}
		h.byLease[lease] = subs
	}
	subs[s] = struct{}{}
	return s
}

// subscribe registers a subscriber. If after is not zero it also returns the
// retained events after that revision that match, and whether the history
// reaches back that far (complete); the subscription then continues exactly
// where the replay ends.
func (h *hub) subscribe(match func(locks.Event) bool, after uint64) (s *subscription, replay []locks.Event, complete bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s = &subscription{h: h, match: match, c: make(chan locks.Event, subBuffer), lost: make(chan struct{})}
	h.subs[s] = struct{}{}
	if after == 0 {
		return s, nil, false
	}
	n := len(h.ring)
	for i := range n {
		e := h.ring[(h.start+i)%n]
		if i == 0 && e.Revision > after {
			// The history no longer reaches back to after (the oldest
			// retained revision may have lost some of its events too).
			return s, nil, false
		}
		if e.Revision > after && match(e) {
			replay = append(replay, e)
		}
	}
	if n == 0 || h.ring[(h.start+n-1)%n].Revision < after {
		// Nothing retained reaches after: this node has not seen that
		// revision (it restarted, or the client watched another node).
		return s, nil, false
	}
	return s, replay, true
}

// oldest is the revision of the oldest event the hub holds (0 if none).
func (h *hub) oldest() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.ring) == 0 {
		return 0
	}
	return h.ring[h.start].Revision
}

func (s *subscription) close() {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	select {
	case <-s.lost: // cut off, and removed then
	default:
		s.h.remove(s)
	}
}
