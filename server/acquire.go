package server

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/lockd-io/lockd/locks"
	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
)

// acquire proposes an Acquire and, if it queued, waits for the grant until
// wait (if set) or ctx runs out. A waiter that gives up is withdrawn; if its
// grant won the race, the withdrawal releases it, so a caller that is told
// "not granted" never holds the lock. When detach closes (its stream ended
// without its caller giving up) the wait ends Unavailable and the waiter
// stays queued, for the caller's retry to find, as when the node drains.
func (s *Server) acquire(ctx context.Context, a *statev1.Acquire, wait *time.Duration, detach <-chan struct{}) (*locks.Result, error) {
	leaseID := a.GetLeaseId()
	if a.GetRequestId() == 0 {
		// Every acquire has a request id, so that it can be cancelled by it.
		a.RequestId = serverRequestID()
	}
	// Subscribe before proposing, so the grant cannot slip by unseen.
	match := func(e locks.Event) bool {
		return e.Type == locks.Granted || e.Type == locks.Withdrawn || e.Type == locks.LeaseEnded
	}
	sub := s.hub.subscribeLease(leaseID, acquireSubBuffer, match)
	defer func() { sub.close() }()
	// Propose without the caller's cancellation: once handed to raft the
	// command may be applied whatever the caller does, and this side must
	// learn what it did in order to undo it.
	res, err := s.propose(context.WithoutCancel(ctx), &statev1.Command{Op: &statev1.Command_Acquire{Acquire: a}})
	if err != nil {
		if _, rejected := err.(*locks.Error); rejected || errors.Is(err, ErrNotProposed) {
			return nil, err
		}
		// The outcome is unknown: cancel the request by its id, so it cannot
		// take effect later, before answering.
		if s.cancelRequest(ctx, leaseID, a.GetRequestId(), a.GetAttempt(), 0, false) == nil {
			return nil, connect.NewError(connect.CodeAborted, errors.New("the acquire could not be applied in time and was cancelled; retry with a new request id"))
		}
		return nil, err
	}
	// gaveUp undoes the acquire of a caller that went away, granted or not:
	// nobody will be told of the grant. (By the waiter too: the table finds
	// a request id only among the lease's last requests.)
	gaveUp := func() error {
		s.cancelInBackground(ctx, leaseID, a.GetRequestId(), a.GetAttempt(), res.WaiterID)
		return ctx.Err()
	}
	if ctx.Err() != nil {
		return nil, gaveUp()
	}
	if res.Granted || a.GetTry() {
		return res, nil
	}
	// outcome is the waiter's fate, if it is settled.
	outcome := func() (bool, *locks.Result, error) {
		done, r, err := s.waiterOutcome(leaseID, res, len(a.GetNames()))
		if done && err == nil && ctx.Err() != nil {
			return true, nil, gaveUp() // granted as its caller left
		}
		return done, r, err
	}
	if res.Duplicate {
		// A retry of a request that queued: it may have been granted since.
		if done, r, err := outcome(); done {
			return r, err
		}
	}
	var timeout <-chan time.Time
	if wait != nil {
		t := time.NewTimer(*wait)
		defer t.Stop()
		timeout = t.C
	}
	for {
		select {
		case e := <-sub.c:
			if e.WaiterID != res.WaiterID && e.Type != locks.LeaseEnded {
				continue
			}
			if done, r, err := outcome(); done {
				return r, err
			}
		case <-sub.lost:
			// Cut off by the hub: listen again, then look at the table, so
			// that a grant made in between is seen one way or the other.
			sub = s.hub.subscribeLease(leaseID, acquireSubBuffer, match)
			if done, r, err := outcome(); done {
				return r, err
			}
		case <-timeout:
			if err := s.cancelRequest(ctx, leaseID, a.GetRequestId(), a.GetAttempt(), res.WaiterID, true); err != nil {
				return nil, err
			}
			return &locks.Result{Revision: s.table.Revision()}, nil
		case <-s.bg.Done():
			// Shutting down. The waiter stays queued: the client retries on
			// another node with the same request id and finds it there.
			return nil, errShuttingDown
		case <-detach:
			return nil, errDetached
		case <-ctx.Done():
			return nil, gaveUp()
		}
	}
}

// serverRequestID makes a request id for an acquire that came without one.
// Client ids are below 1<<63, so the two never collide.
func serverRequestID() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:]) | 1<<63
}

// waiterOutcome looks up a queued acquire in the table: done is true once it
// was granted (r holds the tokens) or is gone (err says why).
func (s *Server) waiterOutcome(leaseID uint64, queued *locks.Result, names int) (done bool, r *locks.Result, err error) {
	state, tokens, pos := s.table.Waiter(leaseID, queued.WaiterID)
	switch state {
	case locks.WaiterGranted:
		if len(tokens) < names {
			return false, nil, nil // the grant's events are still arriving
		}
		return true, &locks.Result{Granted: true, Tokens: tokens[:names], WaiterID: queued.WaiterID, Revision: tokens[0]}, nil
	case locks.WaiterGone:
		if _, alive := s.table.Lease(leaseID); !alive {
			return true, nil, connect.NewError(connect.CodeNotFound,
				fmt.Errorf("lease %d ended (revoked or expired) while it waited", leaseID))
		}
		return true, nil, connect.NewError(connect.CodeAborted,
			fmt.Errorf("the wait of request %d was withdrawn (its caller gave up); acquire again with a new request_id", queued.WaiterID))
	default:
		queued.Position = pos
		return false, nil, nil
	}
}

// cancelRequest cancels one try (attempt) of an acquire by its request id
// (and its waiter id, when known): it withdraws the waiter it queued, or
// releases the grant it got, and makes the id answer Aborted from then on;
// unless a later try of the request reached the table first, whose answer
// stands (errSuperseded). It retries while the cluster is unavailable, for
// up to a minute (until the server closes, if patient) or ProposeTimeout: a
// waiter left behind would be granted a lock nobody uses until its lease
// ends. The cancel is proposed as the caller of the acquire (from caller,
// whose cancellation it outlives), so that it can undo only what that
// caller may touch: a request id is easy to guess.
func (s *Server) cancelRequest(caller context.Context, leaseID, requestID uint64, attempt uint32, waiterID uint64, patient bool) error {
	limit := s.cfg.ProposeTimeout
	if patient {
		limit = time.Minute
	}
	ctx, cancel := context.WithTimeout(s.bg, limit)
	defer cancel()
	if p := principalFrom(caller); p != nil {
		ctx = context.WithValue(ctx, principalKey{}, p)
	}
	backoff := 50 * time.Millisecond
	for {
		res, err := s.propose(ctx, &statev1.Command{Op: &statev1.Command_Cancel{Cancel: &statev1.Cancel{LeaseId: leaseID, RequestId: requestID, Attempt: attempt, WaiterId: waiterID}}})
		if err == nil {
			if res.Ignored {
				s.metrics.cancels.WithLabelValues("superseded").Inc()
				return errSuperseded
			}
			s.metrics.cancels.WithLabelValues("done").Inc()
			return nil
		}
		if te, isTable := err.(*locks.Error); isTable {
			if te.Code == locks.NotFound {
				s.metrics.cancels.WithLabelValues("done").Inc()
				return nil // the lease is gone, and whatever it had with it
			}
			s.metrics.cancels.WithLabelValues("refused").Inc()
			return nil
		}
		select {
		case <-ctx.Done():
			s.metrics.cancels.WithLabelValues("failed").Inc()
			s.log.Warn().Err(err).Uint64("lease", leaseID).Uint64("request", requestID).Msg("could not cancel an acquire; it goes when its lease ends")
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// errSuperseded: a later try of the request reached the table before the
// cancel of an earlier one, which changed nothing. Its caller (if it still
// listens) finds the later try's answer by retrying the request id.
var errSuperseded = shared(connect.NewError(connect.CodeUnavailable,
	errors.New("a later try of this request was applied first; retry with the same request id for its answer")))

// cancelInBackground cancels a try of an acquire whose caller went away.
func (s *Server) cancelInBackground(caller context.Context, leaseID, requestID uint64, attempt uint32, waiterID uint64) {
	s.goBackground(func() { s.cancelRequest(caller, leaseID, requestID, attempt, waiterID, true) })
}
