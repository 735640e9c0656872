package node

import (
	"context"
	"encoding/binary"
	"time"

	"go.etcd.io/raft/v3"
)

// ReadIndex waits until this node has applied everything that was committed
// when it was called, as confirmed by a quorum (raft's ReadIndex). A read of
// the state machine after it returns is linearizable. Concurrent callers
// share one ReadIndex round trip. Like Propose, it waits out an election
// under way; a node cut off from a quorum fails it at once with
// ErrNoLeader.
func (n *Node) ReadIndex(ctx context.Context) error {
	if known, _ := n.lead.get(); !closed(known) && !n.awaitLeader(ctx) {
		return ErrNoLeader
	}
	w := &readWaiter{done: make(chan error, 1)}
	select {
	case n.readc <- w:
	case <-ctx.Done():
		return ctx.Err()
	case <-n.donec:
		return ErrStopped
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-n.donec:
		return ErrStopped
	}
}

type readWaiter struct {
	done chan error
}

// readBatch is a group of readers that share one ReadIndex request.
type readBatch struct {
	id      uint64
	sent    time.Time
	index   uint64 // set when the read state arrives
	waiters []*readWaiter
}

// readQueue batches linearizable reads: readers that arrive while a request
// is in flight wait for the next one, so a burst of reads costs one round of
// heartbeats. It is owned by the raft loop.
type readQueue struct {
	pending   []*readWaiter
	inflight  *readBatch
	confirmed []*readBatch // read index known, waiting for apply
	nextID    uint64
}

func (q *readQueue) add(w *readWaiter) { q.pending = append(q.pending, w) }

// issue starts a ReadIndex request for the pending readers if none is in
// flight.
func (q *readQueue) issue(rn *raft.RawNode, now time.Time) {
	if q.inflight != nil || len(q.pending) == 0 {
		return
	}
	q.nextID++
	b := &readBatch{id: q.nextID, sent: now, waiters: q.pending}
	q.pending = nil
	q.inflight = b
	var ctx [8]byte
	binary.BigEndian.PutUint64(ctx[:], b.id)
	rn.ReadIndex(ctx[:])
}

func (q *readQueue) confirm(rs raft.ReadState) {
	b := q.inflight
	if b == nil || len(rs.RequestCtx) != 8 || binary.BigEndian.Uint64(rs.RequestCtx) != b.id {
		return // an answer to a request already given up on
	}
	b.index = rs.Index
	q.confirmed = append(q.confirmed, b)
	q.inflight = nil
}

// release answers every confirmed batch whose index has been applied.
func (q *readQueue) release(applied uint64) {
	i := 0
	for ; i < len(q.confirmed) && q.confirmed[i].index <= applied; i++ {
		for _, w := range q.confirmed[i].waiters {
			w.done <- nil
		}
	}
	q.confirmed = q.confirmed[i:]
}

// expire fails an in-flight request that a quorum has not confirmed within
// the timeout: raft drops ReadIndex requests silently when there is no
// leader, so without this the readers would wait forever.
func (q *readQueue) expire(now time.Time, timeout time.Duration) {
	if b := q.inflight; b != nil && now.Sub(b.sent) > timeout {
		for _, w := range b.waiters {
			w.done <- ErrReadTimeout
		}
		q.inflight = nil
	}
}

func (q *readQueue) failAll(err error) {
	for _, w := range q.pending {
		w.done <- err
	}
	if q.inflight != nil {
		for _, w := range q.inflight.waiters {
			w.done <- err
		}
	}
	for _, b := range q.confirmed {
		for _, w := range b.waiters {
			w.done <- err
		}
	}
	*q = readQueue{}
}
