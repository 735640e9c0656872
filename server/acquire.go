package server

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/lockd-io/lockd/locks"
	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
)

// acquire proposes an Acquire and, if it queued, waits for the grant until
// wait (if set) or ctx runs out. A waiter that gives up is withdrawn; if its
// grant won the race, the withdrawal releases it, so a caller that is told
// "not granted" never holds the lock.
func (s *Server) acquire(ctx context.Context, a *statev1.Acquire, wait *time.Duration) (*locks.Result, error) {
	leaseID := a.GetLeaseId()
	// Subscribe before proposing, so the grant cannot slip by unseen.
	sub, _, _ := s.hub.subscribe(func(e locks.Event) bool {
		return e.LeaseID == leaseID && (e.Type == locks.Granted || e.Type == locks.Withdrawn || e.Type == locks.LeaseEnded)
	}, 0)
	defer sub.close()
	res, err := s.propose(ctx, &statev1.Command{Op: &statev1.Command_Acquire{Acquire: a}})
	if err != nil || res.Granted || a.GetTry() {
		return res, err
	}
	if res.Duplicate {
		// A retry of a request that queued: it may have been granted since.
		if done, r, err := s.waiterOutcome(leaseID, res, len(a.GetNames())); done {
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
			if done, r, err := s.waiterOutcome(leaseID, res, len(a.GetNames())); done {
				return r, err
			}
		case <-sub.lost:
			// Cut off by the hub: look at the table instead, and listen again.
			if done, r, err := s.waiterOutcome(leaseID, res, len(a.GetNames())); done {
				return r, err
			}
			sub.close()
			sub, _, _ = s.hub.subscribe(sub.match, 0)
		case <-timeout:
			if err := s.withdraw(leaseID, res.WaiterID); err != nil {
				return nil, err
			}
			return &locks.Result{Revision: s.table.Revision()}, nil
		case <-s.bg.Done():
			// Shutting down. The waiter stays queued: the client retries on
			// another node with the same request id and finds it there.
			return nil, errShuttingDown
		case <-ctx.Done():
			// The caller is gone: withdraw in the background, with a
			// context of its own.
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.withdraw(leaseID, res.WaiterID)
			}()
			return nil, ctx.Err()
		}
	}
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

// withdraw proposes the Cancel of a waiter, retrying while the cluster is
// unavailable, for up to a minute or until the server closes: a waiter left
// behind would be granted a lock nobody uses until its lease ends.
func (s *Server) withdraw(leaseID, waiterID uint64) error {
	ctx, cancel := context.WithTimeout(s.bg, time.Minute)
	defer cancel()
	backoff := 50 * time.Millisecond
	for {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := s.propose(pctx, &statev1.Command{Op: &statev1.Command_Cancel{Cancel: &statev1.Cancel{LeaseId: leaseID, WaiterId: waiterID}}})
		pcancel()
		if err == nil {
			return nil
		}
		if _, isTable := err.(*locks.Error); isTable {
			return nil // the lease is gone, and its waiter with it
		}
		select {
		case <-ctx.Done():
			s.log.Warn().Err(err).Uint64("lease", leaseID).Uint64("waiter", waiterID).Msg("could not withdraw a waiter; it goes when its lease ends")
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}
