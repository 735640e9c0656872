package lockd

import (
	"bytes"
	"context"
	"sync"
	"time"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Election is a session's part in a named leader election.
type Election struct {
	s    *Session
	name string

	mu      sync.Mutex
	term    uint64
	ctx     context.Context
	untrack func()
}

// Leader is who leads an election.
type Leader struct {
	Value   []byte
	Term    uint64 // the leader's fencing token
	LeaseID uint64
	Owner   string
}

// NewElection returns the session's handle on the election named name.
func NewElection(s *Session, name string) *Election {
	return &Election{s: s, name: name}
}

// Campaign waits until the session leads the election, then returns. The
// term (Term) is a fencing token; the value is what Leader and Observe show.
// If ctx ends first the candidacy is withdrawn, and a leadership that won
// the race is resigned.
func (e *Election) Campaign(ctx context.Context, value []byte) error {
	_, err := e.campaign(ctx, value, nil)
	return err
}

// CampaignWithin waits at most wait to lead the election, and reports
// whether the session leads. A wait of 0 leads only if nobody leads or
// waits. A candidacy whose wait runs out is withdrawn.
func (e *Election) CampaignWithin(ctx context.Context, value []byte, wait time.Duration) (bool, error) {
	return e.campaign(ctx, value, durationpb.New(wait))
}

func (e *Election) campaign(ctx context.Context, value []byte, wait *durationpb.Duration) (bool, error) {
	if err := e.s.Err(); err != nil {
		return false, err
	}
	req := &lockdv1.CampaignRequest{Name: e.name, LeaseId: e.s.id, Value: value, RequestId: e.s.nextRequestID(), Wait: wait}
	var resp *lockdv1.CampaignResponse
	for {
		// Numbered as Mutex.acquire numbers its tries, and for the same
		// reasons; unanswered as there too.
		var unanswered bool
		err := e.s.c.do(ctx, func(ctx context.Context, ep *endpoint) error {
			req.Attempt++
			r, err := ep.election.Campaign(ctx, connect.NewRequest(req))
			if err == nil {
				resp = r.Msg
			}
			unanswered = err != nil && ctx.Err() == nil && retryable(ctx, err)
			return err
		})
		if connect.CodeOf(err) == connect.CodeAborted && ctx.Err() == nil {
			req.RequestId, req.Attempt = e.s.nextRequestID(), 0 // cancelled by the server; see Mutex.acquire
			continue
		}
		if err != nil {
			if unanswered && ctx.Err() != nil {
				e.withdraw(req)
			}
			return false, err
		}
		break
	}
	// A term is never 0, and Elected is new: a server that knows no wait
	// answers without it.
	if resp.GetTerm() == 0 {
		return false, nil // a wait that ran out
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.untrack != nil {
		e.untrack()
	}
	e.term = resp.GetTerm()
	e.ctx, e.untrack = e.s.track([]string{"election/" + e.name}, e.term)
	return true, nil
}

// withdraw undoes, in the background, a campaign whose caller gave up while
// its latest try, last, had no node answering for it, as Mutex.withdraw
// does for an acquire: otherwise the candidate would stay queued until the
// session ends, and could be elected with nobody to lead. It sends the
// campaign once more, numbered after last and with the shortest wait, and
// resigns the term if that finds the session elected.
func (e *Election) withdraw(last *lockdv1.CampaignRequest) {
	s := e.s
	s.background(withdrawTimeout, func(ctx context.Context) {
		try := proto.Clone(last).(*lockdv1.CampaignRequest)
		try.Wait = durationpb.New(time.Millisecond)
		var resp *lockdv1.CampaignResponse
		err := s.c.do(ctx, func(ctx context.Context, ep *endpoint) error {
			try.Attempt++
			r, err := ep.election.Campaign(ctx, connect.NewRequest(try))
			if err == nil {
				resp = r.Msg
			}
			return err
		})
		if err != nil || resp.GetTerm() == 0 {
			return // withdrawn, or ended with the lease, or the id was cancelled
		}
		s.c.do(ctx, func(ctx context.Context, ep *endpoint) error {
			_, err := ep.election.Resign(ctx, connect.NewRequest(&lockdv1.ResignRequest{Name: e.name, LeaseId: s.id, Term: resp.GetTerm()}))
			return err
		})
	})
}

// Term is the term of the session's leadership, 0 if it does not lead.
func (e *Election) Term() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.term
}

// Context is cancelled when the leadership won by the last Campaign is lost
// (session over, resigned). Nil before the first Campaign.
func (e *Election) Context() context.Context {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ctx
}

// Proclaim changes the leader's value; it fails with FailedPrecondition if
// the session no longer leads in its term.
func (e *Election) Proclaim(ctx context.Context, value []byte) error {
	term := e.Term()
	return e.s.c.do(ctx, func(ctx context.Context, ep *endpoint) error {
		_, err := ep.election.Proclaim(ctx, connect.NewRequest(&lockdv1.ProclaimRequest{Name: e.name, LeaseId: e.s.id, Term: term, Value: value}))
		return err
	})
}

// Resign gives up the leadership (the next candidate leads at once), or
// withdraws a campaign still waiting.
func (e *Election) Resign(ctx context.Context) error {
	e.mu.Lock()
	term, untrack := e.term, e.untrack
	e.term, e.untrack = 0, nil
	e.mu.Unlock()
	if untrack != nil {
		untrack()
	}
	return e.s.c.do(ctx, func(ctx context.Context, ep *endpoint) error {
		_, err := ep.election.Resign(ctx, connect.NewRequest(&lockdv1.ResignRequest{Name: e.name, LeaseId: e.s.id, Term: term}))
		return err
	})
}

// LeaderOf reads who leads election name; nil when nobody does.
func (c *Client) LeaderOf(ctx context.Context, name string) (*Leader, error) {
	var resp *lockdv1.LeaderResponse
	err := c.do(ctx, func(ctx context.Context, ep *endpoint) error {
		r, err := ep.election.Leader(ctx, connect.NewRequest(&lockdv1.LeaderRequest{Name: name}))
		if err == nil {
			resp = r.Msg
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return leaderOf(resp), nil
}

// Leader reads who leads the election; nil when nobody does.
func (e *Election) Leader(ctx context.Context) (*Leader, error) {
	return e.s.c.LeaderOf(ctx, e.name)
}

func leaderOf(r *lockdv1.LeaderResponse) *Leader {
	l := r.GetLeader()
	if l == nil {
		return nil
	}
	return &Leader{Value: l.GetValue(), Term: l.GetTerm(), LeaseID: l.GetLeaseId(), Owner: l.GetOwner()}
}

// Observation is one state of an election: its leader (nil when none) as
// of a revision.
type Observation struct {
	Leader   *Leader
	Revision uint64
}

// Observe streams the election's state: at once the current one ("no
// leader" included), then every change, in order, until ctx ends. It
// reconnects on its own (to another node if need be); a reconnection
// repeats the current state only if it changed. The channel is closed when
// ctx ends.
func (c *Client) Observe(ctx context.Context, name string) <-chan Observation {
	out := make(chan Observation, 16)
	go func() {
		defer close(out)
		var last *Leader
		var lastRev uint64
		first := true
		for ctx.Err() == nil {
			c.do(ctx, func(ctx context.Context, ep *endpoint) error {
				// Resume after the last revision seen: the node replays the
				// changes since, or starts again with the current state.
				stream, err := ep.election.Observe(ctx, connect.NewRequest(&lockdv1.ObserveRequest{Name: name, AfterRevision: lastRev}))
				if err != nil {
					return err
				}
				defer stream.Close()
				for stream.Receive() {
					l := leaderOf(stream.Msg())
					lastRev = max(lastRev, stream.Msg().GetRevision())
					if !first && sameLeader(last, l) {
						continue
					}
					first, last = false, l
					select {
					case out <- Observation{Leader: l, Revision: stream.Msg().GetRevision()}:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				if err := stream.Err(); err != nil {
					return err
				}
				return connect.NewError(connect.CodeUnavailable, nil) // ended: reconnect
			})
			select {
			case <-ctx.Done():
			case <-time.After(c.opts.minBackoff):
			}
		}
	}()
	return out
}

// Observe streams the state of this election, as Client.Observe does for
// its name: at once the current leader (nil when there is none), then every
// change, in order, until ctx ends, when the channel is closed. It does not
// campaign: it works whether or not the session leads.
func (e *Election) Observe(ctx context.Context) <-chan Observation {
	return e.s.c.Observe(ctx, e.name)
}

func sameLeader(a, b *Leader) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Term == b.Term && a.LeaseID == b.LeaseID && bytes.Equal(a.Value, b.Value)
}
