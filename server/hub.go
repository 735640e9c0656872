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
}

const (
	hubHistory = 1 << 16
	subBuffer  = 1024
)

type subscription struct {
	h     *hub
	match func(locks.Event) bool
	c     chan locks.Event
	// lost is closed when the subscriber fell behind and was dropped.
	lost chan struct{}
}

func newHub() *hub {
	return &hub{ring: make([]locks.Event, 0, hubHistory), subs: map[*subscription]struct{}{}}
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
				close(s.lost)
				delete(h.subs, s)
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
			if !s.match(e) {
				continue
			}
			select {
			case s.c <- e:
			default:
				close(s.lost)
				delete(h.subs, s)
			}
		}
	}
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

func (s *subscription) close() {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	delete(s.h.subs, s)
}
