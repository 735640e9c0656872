package lockd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ErrNotHeld is returned by Unlock when the lock is not held.
var ErrNotHeld = errors.New("lockd: lock not held")

// Mutex is a lock held by a Session: a mutex by default, or, with options, a
// semaphore slot, a shared or exclusive side of a read-write lock, or
// several locks at once. It is safe for concurrent use, but it is one
// holder: Lock by two goroutines of the same Mutex returns the same grant.
type Mutex struct {
	s     *Session
	name  string
	mode  lockdv1.Mode
	cap   uint32
	also  []string
	delay time.Duration
	value []byte

	mu      sync.Mutex
	token   uint64
	tokens  map[string]uint64
	ctx     context.Context
	untrack func()
}

// LockOption configures a Mutex.
type LockOption interface{ applyLock(*Mutex) }

type lockOptionFunc func(*Mutex)

func (f lockOptionFunc) applyLock(m *Mutex) { f(m) }

// WithLockDelay sets the lock's delay after its holder's lease expires,
// during which nobody is granted it (for resources that do not check
// fencing tokens). It takes effect when the lock is created.
func WithLockDelay(d time.Duration) LockOption {
	return lockOptionFunc(func(m *Mutex) { m.delay = d })
}

// WithValue stores a value with the grant; Describe shows it.
func WithValue(v []byte) LockOption {
	return lockOptionFunc(func(m *Mutex) { m.value = v })
}

// NewMutex returns a mutex (a lock of capacity 1) named name.
func NewMutex(s *Session, name string, opts ...LockOption) *Mutex {
	m := &Mutex{s: s, name: name, mode: lockdv1.Mode_MODE_EXCLUSIVE, cap: 1}
	for _, o := range opts {
		o.applyLock(m)
	}
	return m
}

// NewSemaphore returns one slot of a semaphore of n slots named name. Every
// user of the semaphore must give the same n.
func NewSemaphore(s *Session, name string, n uint32, opts ...LockOption) *Mutex {
	m := NewMutex(s, name, opts...)
	m.mode, m.cap = lockdv1.Mode_MODE_SHARED, n
	return m
}

// NewMultiLock returns a lock of several mutexes taken together, all or
// none, without lock-ordering deadlocks: the request waits in every queue at
// once.
func NewMultiLock(s *Session, names []string, opts ...LockOption) *Mutex {
	m := NewMutex(s, names[0], opts...)
	m.also = append([]string(nil), names[1:]...)
	return m
}

// RWMutex is a read-write lock: many readers or one writer, granted in FIFO
// order (a reader behind a waiting writer waits).
type RWMutex struct {
	r, w *Mutex
}

// NewRWMutex returns a read-write lock named name admitting up to
// maxReaders readers at once. Every user must give the same maxReaders.
func NewRWMutex(s *Session, name string, maxReaders uint32, opts ...LockOption) *RWMutex {
	r := NewMutex(s, name, opts...)
	r.mode, r.cap = lockdv1.Mode_MODE_SHARED, maxReaders
	w := NewMutex(s, name, opts...)
	w.mode, w.cap = lockdv1.Mode_MODE_EXCLUSIVE, maxReaders
	return &RWMutex{r: r, w: w}
}

// RLock takes the lock for reading.
func (rw *RWMutex) RLock(ctx context.Context) error { return rw.r.Lock(ctx) }

// RUnlock releases a read lock.
func (rw *RWMutex) RUnlock(ctx context.Context) error { return rw.r.Unlock(ctx) }

// Lock takes the lock for writing.
func (rw *RWMutex) Lock(ctx context.Context) error { return rw.w.Lock(ctx) }

// Unlock releases the write lock.
func (rw *RWMutex) Unlock(ctx context.Context) error { return rw.w.Unlock(ctx) }

// Reader and Writer expose the two sides, for their tokens and contexts.
func (rw *RWMutex) Reader() *Mutex { return rw.r }

// Writer is the exclusive side.
func (rw *RWMutex) Writer() *Mutex { return rw.w }

// Lock waits until the lock is granted or ctx ends. If ctx ends first the
// server withdraws the request, and releases the lock if the grant won the
// race.
func (m *Mutex) Lock(ctx context.Context) error {
	_, err := m.acquire(ctx, nil)
	return err
}

// TryLock takes the lock if it is free and nobody waits for it, without
// queueing.
func (m *Mutex) TryLock(ctx context.Context) (bool, error) {
	return m.acquire(ctx, durationpb.New(0))
}

// LockWithin waits at most wait for the lock, and reports whether it got it.
func (m *Mutex) LockWithin(ctx context.Context, wait time.Duration) (bool, error) {
	return m.acquire(ctx, durationpb.New(wait))
}

func (m *Mutex) acquire(ctx context.Context, wait *durationpb.Duration) (bool, error) {
	if err := m.s.Err(); err != nil {
		return false, err
	}
	req := &lockdv1.AcquireRequest{
		Name:      m.name,
		Also:      m.also,
		LeaseId:   m.s.id,
		RequestId: m.s.nextRequestID(),
		Wait:      wait,
		Mode:      m.mode,
		Capacity:  m.cap,
		Value:     m.value,
	}
	if m.delay > 0 {
		req.LockDelay = durationpb.New(m.delay)
	}
	var resp *lockdv1.AcquireResponse
	for {
		// The same request id on every retry: a retry after a lost reply
		// finds the first attempt's waiter or grant instead of queueing
		// again. Each try is numbered, so that the node of an abandoned
		// try, withdrawing it, cannot undo what a later try got.
		try := req
		// unanswered: the latest try ended without an answer, its node
		// gone or cut off, and with it whoever would withdraw the try.
		var unanswered bool
		err := m.s.c.do(ctx, func(ctx context.Context, e *endpoint) error {
			if try.Attempt > 0 {
				// A new message: the last one may still sit in a stream's
				// queue, read by its sender.
				try = proto.Clone(try).(*lockdv1.AcquireRequest)
			}
			try.Attempt++
			r, err := e.acquire(ctx, try)
			if err == nil {
				resp = r
			}
			unanswered = err != nil && ctx.Err() == nil && retryable(ctx, err)
			return err
		})
		if connect.CodeOf(err) == connect.CodeAborted && ctx.Err() == nil {
			// The server cancelled the request (it could not learn its
			// outcome in time): start again with a new id.
			req = proto.Clone(req).(*lockdv1.AcquireRequest)
			req.RequestId, req.Attempt = m.s.nextRequestID(), 0
			continue
		}
		if err != nil {
			if unanswered && ctx.Err() != nil {
				m.withdraw(try)
			}
			return false, err
		}
		break
	}
	if !resp.GetGranted() {
		return false, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.untrack != nil {
		m.untrack()
	}
	m.token = resp.GetToken()
	m.tokens = map[string]uint64{}
	for _, g := range resp.GetGrants() {
		m.tokens[g.GetName()] = g.GetToken()
	}
	m.ctx, m.untrack = m.s.track(append([]string{m.name}, m.also...), m.token)
	return true, nil
}

// withdrawTimeout bounds how long a Mutex or an Election keeps trying to
// withdraw an abandoned acquire or campaign (see Mutex.withdraw).
const withdrawTimeout = time.Minute

// withdraw undoes, in the background, an acquire whose caller gave up while
// its latest try, last, had no node answering for it: the node that queued
// it died or was cut off, so no node will withdraw it, and its waiter would
// stay queued until the session ends, to be granted to nobody. It sends the
// request once more, numbered after last and with the shortest wait: the
// node that takes it withdraws the waiter when the wait passes, and a grant
// that came first is answered, and released here. It stops when the
// session ends, which ends the waiter too.
func (m *Mutex) withdraw(last *lockdv1.AcquireRequest) {
	s := m.s
	s.background(withdrawTimeout, func(ctx context.Context) {
		try := proto.Clone(last).(*lockdv1.AcquireRequest)
		try.Wait = durationpb.New(time.Millisecond)
		var resp *lockdv1.AcquireResponse
		err := s.c.do(ctx, func(ctx context.Context, e *endpoint) error {
			try = proto.Clone(try).(*lockdv1.AcquireRequest)
			try.Attempt++
			r, err := e.acquire(ctx, try)
			resp = r
			return err
		})
		if err != nil || !resp.GetGranted() {
			return // withdrawn, or ended with the lease, or the id was cancelled
		}
		s.release(ctx, append([]string{try.GetName()}, try.GetAlso()...), resp.GetToken())
	})
}

// Token is the fencing token of the current grant, 0 if not held.
func (m *Mutex) Token() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.token
}

// Tokens is the fencing token of each lock of a multi-lock grant.
func (m *Mutex) Tokens() map[string]uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]uint64, len(m.tokens))
	for k, v := range m.tokens {
		out[k] = v
	}
	return out
}

// Context is cancelled when the current grant is lost: the session ended or
// presumed ended (past its local deadline), an admin force-released it, or
// Unlock was called. context.Cause tells which. Work done under the lock
// should run under this context. Before the first grant it is nil.
func (m *Mutex) Context() context.Context {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ctx
}

// Unlock releases the lock: every lock of a multi-lock grant, even when
// one of them turns out lost, in which case it returns ErrLost.
func (m *Mutex) Unlock(ctx context.Context) error {
	m.mu.Lock()
	token, untrack := m.token, m.untrack
	m.token, m.tokens, m.untrack = 0, nil, nil
	m.mu.Unlock()
	if token == 0 {
		return ErrNotHeld
	}
	untrack()
	if err := m.s.release(ctx, append([]string{m.name}, m.also...), token); err != nil {
		if c := connect.CodeOf(err); c == connect.CodeFailedPrecondition || c == connect.CodeNotFound {
			return fmt.Errorf("%w: %v", ErrLost, err)
		}
		return err
	}
	return nil
}
