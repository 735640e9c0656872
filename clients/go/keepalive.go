package lockd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
)

// maxKeepAliveBatch bounds the leases of one KeepAliveMany call (the server
// takes up to 50000).
const maxKeepAliveBatch = 10000

// keepAliveGather is how long a batch waits for more keep-alives to join,
// at most: it is also kept under a twentieth of the shortest TTL.
const keepAliveGather = 50 * time.Millisecond

// keepAlives sends the keep-alives of a client's sessions together, the way
// a log groups commits: a keep-alive that arrives while a call is in flight
// goes with the next one. A client with 100k sessions then makes a few
// calls a second instead of 30k, and the leader checks its quorum once for
// all of them.
type keepAlives struct {
	mu      sync.Mutex
	queue   []*keepAliveReq
	sending bool
}

type keepAliveReq struct {
	ctx  context.Context // ends when the session stops waiting
	id   uint64
	ttl  time.Duration
	done chan error // nil, errLeaseNotFound, or why the keep-alive failed
}

var errLeaseNotFound = errors.New("lockd: lease not found")

// keepAlive renews lease id, waiting at most until ctx ends. It returns
// errLeaseNotFound if the leader does not know the lease.
func (c *Client) keepAlive(ctx context.Context, id uint64, ttl time.Duration) error {
	r := &keepAliveReq{ctx: ctx, id: id, ttl: ttl, done: make(chan error, 1)}
	k := &c.keepAlives
	k.mu.Lock()
	k.queue = append(k.queue, r)
	start := !k.sending
	k.sending = true
	k.mu.Unlock()
	if start {
		go c.sendKeepAlives()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sendKeepAlives sends batches until the queue is empty. Before each it
// waits a moment for more keep-alives to join: a keep-alive is sent every
// TTL/3 and counted from when it was queued, so the wait costs the session
// nothing but a little of its margin.
func (c *Client) sendKeepAlives() {
	k := &c.keepAlives
	for {
		k.mu.Lock()
		gather := keepAliveGather
		for _, r := range k.queue {
			gather = min(gather, r.ttl/20)
		}
		k.mu.Unlock()
		time.Sleep(gather)
		k.mu.Lock()
		var batch []*keepAliveReq
		n := 0
		for _, r := range k.queue {
			switch {
			case r.ctx.Err() != nil: // nobody waits for it any more
			case len(batch) < maxKeepAliveBatch:
				batch = append(batch, r)
			default:
				k.queue[n] = r
				n++
			}
		}
		clear(k.queue[n:])
		k.queue = k.queue[:n]
		if len(batch) == 0 {
			k.sending = false
			k.mu.Unlock()
			return
		}
		k.mu.Unlock()
		for _, r := range c.sendKeepAliveBatch(batch) {
			// Cut short by a more urgent member's deadline: again, in the
			// next batch.
			k.mu.Lock()
			k.queue = append(k.queue, r)
			k.mu.Unlock()
		}
	}
}

// sendKeepAliveBatch sends one KeepAliveMany, retrying over the nodes until
// the earliest deadline of its members, and answers each member. It returns
// the members that are still waiting after the call gave up at another
// member's deadline.
func (c *Client) sendKeepAliveBatch(batch []*keepAliveReq) (again []*keepAliveReq) {
	ids := make([]uint64, len(batch))
	minTTL := batch[0].ttl
	var deadline time.Time
	for i, r := range batch {
		ids[i] = r.id
		minTTL = min(minTTL, r.ttl)
		if d, ok := r.ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
			deadline = d
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !deadline.IsZero() {
		var cancelAt context.CancelFunc
		ctx, cancelAt = context.WithDeadline(ctx, deadline)
		defer cancelAt()
	}
	var resp *lockdv1.KeepAliveManyResponse
	err := c.do(ctx, func(ctx context.Context, e *endpoint) error {
		// One node gets a share of the TTL; then the next is tried.
		attempt, cancel := context.WithTimeout(ctx, max(minTTL/6, 100*time.Millisecond))
		defer cancel()
		r, err := e.lease.KeepAliveMany(attempt, connect.NewRequest(&lockdv1.KeepAliveManyRequest{LeaseIds: ids}))
		if err != nil && attempt.Err() != nil && ctx.Err() == nil {
			return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s did not answer in time", e.url))
		}
		if err == nil {
			resp = r.Msg
		}
		return err
	})
	if err == nil && len(resp.GetResults()) != len(ids) {
		err = fmt.Errorf("lockd: %d keep-alive results for %d leases", len(resp.GetResults()), len(ids))
	}
	for i, r := range batch {
		switch {
		case err == nil && resp.GetResults()[i].GetFound():
			r.done <- nil
		case err == nil:
			r.done <- errLeaseNotFound
		case ctx.Err() != nil && r.ctx.Err() == nil:
			again = append(again, r)
		default:
			r.done <- err
		}
	}
	return again
}
