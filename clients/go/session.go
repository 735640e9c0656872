package lockd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Errors a Session reports once it is over.
var (
	// ErrSessionExpired: no keep-alive was acknowledged in time, or the
	// server no longer knows the lease. Every grant of the session is lost.
	ErrSessionExpired = errors.New("lockd: session expired")
	// ErrSessionClosed: Close was called.
	ErrSessionClosed = errors.New("lockd: session closed")
	// ErrLost: a grant was taken away (force-released by an admin, or the
	// session ended).
	ErrLost = errors.New("lockd: lock lost")
)

// DefaultTTL is a session's TTL unless WithTTL says otherwise.
const DefaultTTL = 10 * time.Second

// Session is a lease kept alive in the background. Locks and elections
// belong to a session and are lost with it.
type Session struct {
	c      *Client
	id     uint64
	ttl    time.Duration
	margin time.Duration
	seq    atomic.Uint64 // request ids

	mu       sync.Mutex
	deadline time.Time // the local deadline: past it, treat every grant as lost
	err      error
	grants   map[string]*grantWatch // lock name → who to tell when it is lost

	done   chan struct{}
	bg     context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup
	events sync.Once // the lease's event stream starts with the first grant
}

type grantWatch struct {
	token  uint64
	cancel context.CancelCauseFunc
}

// SessionOption configures NewSession.
type SessionOption interface{ applySession(*sessionOptions) }

type sessionOptions struct {
	ttl   time.Duration
	owner string
}

type sessionOptionFunc func(*sessionOptions)

func (f sessionOptionFunc) applySession(o *sessionOptions) { f(o) }

// WithTTL sets the lease TTL (default 10s). The server refuses TTLs below
// its election timeout.
func WithTTL(ttl time.Duration) SessionOption {
	return sessionOptionFunc(func(o *sessionOptions) { o.ttl = ttl })
}

// WithOwner labels the lease for people: Describe shows it beside its locks.
func WithOwner(owner string) SessionOption {
	return sessionOptionFunc(func(o *sessionOptions) { o.owner = owner })
}

// NewSession grants a lease and keeps it alive until Close or until it is
// lost.
func (c *Client) NewSession(ctx context.Context, opts ...SessionOption) (*Session, error) {
	o := sessionOptions{ttl: DefaultTTL}
	for _, opt := range opts {
		opt.applySession(&o)
	}
	sent := time.Now()
	var resp *lockdv1.GrantResponse
	err := c.do(ctx, func(ctx context.Context, e *endpoint) error {
		r, err := e.lease.Grant(ctx, connect.NewRequest(&lockdv1.GrantRequest{Ttl: durationpb.New(o.ttl), Owner: o.owner}))
		if err == nil {
			resp = r.Msg
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	s := &Session{
		c:      c,
		id:     resp.GetLeaseId(),
		ttl:    o.ttl,
		margin: max(o.ttl/10, 50*time.Millisecond),
		grants: map[string]*grantWatch{},
		done:   make(chan struct{}),
	}
	s.deadline = sent.Add(s.ttl - s.margin)
	s.bg, s.stop = context.WithCancel(context.Background())
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.keepAlive(s.bg) }()
	return s, nil
}

// ID is the lease id.
func (s *Session) ID() uint64 { return s.id }

// TTL is the lease's TTL.
func (s *Session) TTL() time.Duration { return s.ttl }

// Done is closed when the session is over: expired (or presumed so) or
// closed. Err says which.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is nil while the session lives, then ErrSessionExpired or
// ErrSessionClosed.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Deadline is the local deadline: the send time of the last acknowledged
// keep-alive plus the TTL, less a margin. The server never expires the lease
// before it.
func (s *Session) Deadline() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deadline
}

func (s *Session) nextRequestID() uint64 { return s.seq.Add(1) }

// end marks the session over and tells every grant.
func (s *Session) end(err error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = err
	grants := s.grants
	s.grants = map[string]*grantWatch{}
	s.mu.Unlock()
	for _, g := range grants {
		g.cancel(fmt.Errorf("%w: %w", ErrLost, err))
	}
	close(s.done)
	s.stop()
}

// keepAlive renews the lease every TTL/3 and ends the session when the
// local deadline passes without a renewal.
func (s *Session) keepAlive(ctx context.Context) {
	interval := s.ttl / 3
	for {
		s.mu.Lock()
		deadline := s.deadline
		s.mu.Unlock()
		wait := min(interval, time.Until(deadline))
		timer := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		if !time.Now().Before(deadline) {
			s.end(ErrSessionExpired)
			return
		}
		sent := time.Now()
		// Give up on this attempt before the deadline, to check it.
		actx, cancel := context.WithDeadline(ctx, deadline)
		err := s.c.keepAlive(actx, s.id, s.ttl)
		cancel()
		switch {
		case err == nil:
			s.mu.Lock()
			if d := sent.Add(s.ttl - s.margin); d.After(s.deadline) {
				s.deadline = d
			}
			s.mu.Unlock()
		case errors.Is(err, errLeaseNotFound):
			s.end(ErrSessionExpired)
			return
		}
	}
}

// watchEvents follows the lease's event stream and cancels the context of a
// grant the server took away (force release).
func (s *Session) watchEvents(ctx context.Context) {
	backoff := s.c.opts.minBackoff
	for ctx.Err() == nil {
		err := s.c.do(ctx, func(ctx context.Context, e *endpoint) error {
			stream, err := e.lease.Events(ctx, connect.NewRequest(&lockdv1.LeaseEventsRequest{LeaseId: s.id}))
			if err != nil {
				return err
			}
			defer stream.Close()
			held := map[string]uint64{}
			for stream.Receive() {
				ev := stream.Msg()
				switch ev.GetType() {
				case lockdv1.LeaseEvent_TYPE_GRANTED:
					held[ev.GetName()] = ev.GetToken()
				case lockdv1.LeaseEvent_TYPE_SYNCED:
					// A grant this session tracks that the server no longer
					// lists was lost while the stream was down.
					s.lostUnless(held, ev.GetRevision())
				case lockdv1.LeaseEvent_TYPE_LOST:
					s.lost(ev.GetName(), ev.GetToken(), ev.GetReason())
				case lockdv1.LeaseEvent_TYPE_LEASE_ENDED:
					s.end(ErrSessionExpired)
					return nil
				}
			}
			return stream.Err()
		})
		if connect.CodeOf(err) == connect.CodeNotFound {
			s.end(ErrSessionExpired)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, s.c.opts.maxBackoff)
	}
}

// lostUnless reports as lost every tracked grant made by revision rev (a
// token is the revision of its grant) that held, the grants as of rev, lacks.
func (s *Session) lostUnless(held map[string]uint64, rev uint64) {
	s.mu.Lock()
	var gone []*grantWatch
	for name, g := range s.grants {
		if g.token <= rev && held[name] != g.token {
			gone = append(gone, g)
			delete(s.grants, name)
		}
	}
	s.mu.Unlock()
	for _, g := range gone {
		g.cancel(fmt.Errorf("%w: no longer held after reconnecting", ErrLost))
	}
}

func (s *Session) lost(name string, token uint64, reason string) {
	s.mu.Lock()
	g, ok := s.grants[name]
	if ok && g.token == token {
		for n, other := range s.grants {
			if other == g {
				delete(s.grants, n)
			}
		}
	}
	s.mu.Unlock()
	if ok && g.token == token {
		g.cancel(fmt.Errorf("%w: %s", ErrLost, reason))
	}
}

// track returns a context that is cancelled when the grant with token of
// any of names is lost, and a func that stops tracking it.
func (s *Session) track(names []string, token uint64) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		cancel(fmt.Errorf("%w: %w", ErrLost, err))
		return ctx, func() {}
	}
	g := &grantWatch{token: token, cancel: cancel}
	for _, n := range names {
		s.grants[n] = g
	}
	s.mu.Unlock()
	s.events.Do(func() {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.watchEvents(s.bg) }()
	})
	return ctx, func() {
		s.mu.Lock()
		for _, n := range names {
			if s.grants[n] == g {
				delete(s.grants, n)
			}
		}
		s.mu.Unlock()
		cancel(context.Canceled)
	}
}

// release releases the lease's grant of token on each of names. It tries
// every name, so that one lost lock does not leave the others held, and
// returns the first error.
func (s *Session) release(ctx context.Context, names []string, token uint64) error {
	var first error
	for _, name := range names {
		req := &lockdv1.ReleaseRequest{Name: name, LeaseId: s.id, Token: token, RequestId: s.nextRequestID()}
		err := s.c.do(ctx, func(ctx context.Context, e *endpoint) error {
			_, err := e.release(ctx, req)
			return err
		})
		if first == nil {
			first = err
		}
	}
	return first
}

// background runs f on a goroutine that Close waits for, with a context
// that ends after timeout or with the session. It does nothing once the
// session has ended.
func (s *Session) background(timeout time.Duration, f func(ctx context.Context)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	s.wg.Add(1) // under s.mu, with the session alive: before Close's Wait
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(s.bg, timeout)
		defer cancel()
		f(ctx)
	}()
}

// Close revokes the lease, releasing every lock it holds. It uses ctx for
// the revoke; the session is over either way.
func (s *Session) Close(ctx context.Context) error {
	err := s.c.do(ctx, func(ctx context.Context, e *endpoint) error {
		_, err := e.lease.Revoke(ctx, connect.NewRequest(&lockdv1.RevokeRequest{LeaseId: s.id}))
		return err
	})
	if connect.CodeOf(err) == connect.CodeNotFound {
		err = nil // already gone
	}
	s.end(ErrSessionClosed)
	s.wg.Wait()
	return err
}

// Client is the client the session was made with.
func (s *Session) Client() *Client { return s.c }
