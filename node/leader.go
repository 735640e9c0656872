package node

import (
	"context"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/raft/v3"
)

// leaderWatch tells callers whether this node knows a leader, and lets
// them wait for one. It is set by the raft loop on every leader change.
type leaderWatch struct {
	mu    sync.Mutex
	known chan struct{} // closed while a leader is known
	lost  time.Time     // when this node last lost sight of a leader
}

func (w *leaderWatch) init(now time.Time) {
	w.known = make(chan struct{})
	w.lost = now
}

func (w *leaderWatch) set(known bool, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case <-w.known:
		if !known {
			w.known = make(chan struct{})
			w.lost = now
		}
	default:
		if known {
			close(w.known)
		}
	}
}

func (w *leaderWatch) get() (known <-chan struct{}, lost time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.known, w.lost
}

// awaitLeader waits for a leader while an election may still be under way:
// for up to two election timeouts after this node lost sight of the last
// one, which covers a randomized timeout and a split vote. So a request
// that arrives while the cluster elects is served as soon as it has a
// leader, the way etcd holds proposals, instead of failing and leaving its
// client to guess when to come back. It reports whether a leader is now
// known. A node that has known no leader for longer (it is cut off from a
// quorum) answers false at once, so that its clients go elsewhere; so does
// a node that knows a leader, since what failed there was not the lack of
// one.
func (n *Node) awaitLeader(ctx context.Context) bool {
	known, lost := n.lead.get()
	if closed(known) {
		return false
	}
	wait := time.Until(lost.Add(2 * n.cfg.ElectionTimeout))
	if wait <= 0 {
		return false
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-known:
		return true
	case <-t.C:
	case <-ctx.Done():
	case <-n.donec:
	}
	return false
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// leaderGone is called on the raft loop when the peer id refused a
// connection after its stream ended: its process is gone. If it is this
// follower's leader, the node does not wait out an election timeout of
// silence. It runs its election clock a whole timeout ahead, so that it
// stops honouring the dead leader's lease and grants the pre-votes of peers
// that saw the same, and campaigns after a random fifth of a timeout (the
// spread keeps two such followers from splitting the vote). Only liveness
// moves: raft's safety rests on no clock, a pre-vote still needs a quorum
// that no longer hears a leader, and a node that did not see the leader go
// keeps its lease and refuses. It acts once per term.
func (n *Node) leaderGone(id uint64) {
	st := n.rn.BasicStatus()
	term := st.GetTerm()
	if st.Lead != id || st.RaftState != raft.StateFollower || n.hastened == term {
		return
	}
	n.hastened = term
	n.log.Info().Str("leader", strconv.FormatUint(id, 16)).Msg("leader's port refuses connections; hastening the election")
	for range n.cfg.electionTicks() {
		n.rn.Tick()
	}
	delay := rand.N(n.cfg.ElectionTimeout / 5)
	time.AfterFunc(delay, func() {
		n.runAsync(func(rn *raft.RawNode) {
			// Unless a leader emerged meanwhile (or this node campaigns
			// already, on its own clock).
			if st := rn.BasicStatus(); st.GetTerm() == term && st.RaftState == raft.StateFollower {
				rn.Campaign()
			}
		})
	})
}
