package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.uber.org/zap"
)

// system is a lock service under test, driven through its own client
// library as its users would.
type system interface {
	newSession(ctx context.Context, ttl time.Duration) (session, error)
	// campaign creates a session with ttl and returns once it leads the
	// election name.
	campaign(ctx context.Context, ttl time.Duration, name string) error
	// floorCall is the cheapest call the server answers: no raft, no disk.
	floorCall(ctx context.Context) error
	// leader returns the endpoint of the raft leader.
	leader(ctx context.Context) (string, error)
	close()
}

type session interface {
	mutex(name string) mutex
	close(ctx context.Context) error
	lost() <-chan struct{}
}

type mutex interface {
	lock(ctx context.Context) error
	tryLock(ctx context.Context) (bool, error)
	unlock(ctx context.Context) error
	// token is the grant's fencing token (lockd) or its key's create
	// revision (etcd): both order grants.
	token() uint64
}

func newSystem(kind string, endpoints []string) (system, error) {
	switch kind {
	case "lockd":
		c, err := lockd.New(endpoints)
		if err != nil {
			return nil, err
		}
		return &lockdSystem{c: c}, nil
	case "etcd", "etcd-v3lock":
		var urls []string
		for _, e := range endpoints {
			if !strings.Contains(e, "://") {
				e = "http://" + e
			}
			urls = append(urls, e)
		}
		c, err := clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return nil, err
		}
		if kind == "etcd-v3lock" {
			return etcdV3LockSystem{&etcdSystem{c: c, endpoints: urls}}, nil
		}
		return &etcdSystem{c: c, endpoints: urls}, nil
	}
	return nil, fmt.Errorf("unknown system %q (lockd, etcd or etcd-v3lock)", kind)
}

type lockdSystem struct{ c *lockd.Client }

func (l *lockdSystem) newSession(ctx context.Context, ttl time.Duration) (session, error) {
	s, err := l.c.NewSession(ctx, lockd.WithTTL(ttl), lockd.WithOwner("lockbench"))
	if err != nil {
		return nil, err
	}
	return lockdSession{s}, nil
}

func (l *lockdSystem) leader(ctx context.Context) (string, error) {
	st, err := l.c.Status(ctx)
	if err != nil {
		return "", err
	}
	if st.GetLeaderUrl() == "" {
		return "", fmt.Errorf("no leader")
	}
	return strings.TrimPrefix(st.GetLeaderUrl(), "http://"), nil
}

func (l *lockdSystem) close() { l.c.Close() }

type lockdSession struct{ s *lockd.Session }

func (s lockdSession) mutex(name string) mutex         { return lockdMutex{lockd.NewMutex(s.s, name)} }
func (s lockdSession) close(ctx context.Context) error { return s.s.Close(ctx) }
func (s lockdSession) lost() <-chan struct{}           { return s.s.Done() }

type lockdMutex struct{ m *lockd.Mutex }

func (m lockdMutex) lock(ctx context.Context) error            { return m.m.Lock(ctx) }
func (m lockdMutex) tryLock(ctx context.Context) (bool, error) { return m.m.TryLock(ctx) }
func (m lockdMutex) unlock(ctx context.Context) error          { return m.m.Unlock(ctx) }
func (m lockdMutex) token() uint64                             { return m.m.Token() }

type etcdSystem struct {
	c         *clientv3.Client
	endpoints []string
}

func (e *etcdSystem) newSession(ctx context.Context, ttl time.Duration) (session, error) {
	s, err := concurrency.NewSession(e.c, concurrency.WithTTL(int(ttl/time.Second)), concurrency.WithContext(context.Background()))
	if err != nil {
		return nil, err
	}
	return etcdSession{s}, nil
}

func (e *etcdSystem) leader(ctx context.Context) (string, error) {
	for _, ep := range e.endpoints {
		st, err := e.c.Status(ctx, ep)
		if err == nil && st.Leader == st.Header.MemberId {
			return strings.TrimPrefix(ep, "http://"), nil
		}
	}
	return "", fmt.Errorf("no leader")
}

func (e *etcdSystem) close() { e.c.Close() }

type etcdSession struct{ s *concurrency.Session }

func (s etcdSession) mutex(name string) mutex {
	return &etcdMutex{m: concurrency.NewMutex(s.s, "/lockbench/"+name)}
}
func (s etcdSession) close(ctx context.Context) error { return s.s.Close() }
func (s etcdSession) lost() <-chan struct{}           { return s.s.Done() }

type etcdMutex struct{ m *concurrency.Mutex }

func (m *etcdMutex) lock(ctx context.Context) error { return m.m.Lock(ctx) }
func (m *etcdMutex) tryLock(ctx context.Context) (bool, error) {
	err := m.m.TryLock(ctx)
	if err == concurrency.ErrLocked {
		return false, nil
	}
	return err == nil, err
}
func (m *etcdMutex) unlock(ctx context.Context) error { return m.m.Unlock(ctx) }
func (m *etcdMutex) token() uint64                    { return uint64(m.m.Header().GetRevision()) }

// campaign runs for election: it returns once this process leads.
func (l *lockdSystem) campaign(ctx context.Context, ttl time.Duration, name string) error {
	s, err := l.c.NewSession(ctx, lockd.WithTTL(ttl), lockd.WithOwner("lockbench"))
	if err != nil {
		return err
	}
	return lockd.NewElection(s, name).Campaign(ctx, []byte("lockbench"))
}

func (l *lockdSystem) floorCall(ctx context.Context) error {
	_, err := l.c.Status(ctx)
	return err
}

func (e *etcdSystem) campaign(ctx context.Context, ttl time.Duration, name string) error {
	s, err := concurrency.NewSession(e.c, concurrency.WithTTL(int(ttl/time.Second)), concurrency.WithContext(context.Background()))
	if err != nil {
		return err
	}
	return concurrency.NewElection(s, "/lockbench/"+name).Campaign(ctx, "lockbench")
}

// floorCall is a serializable read: answered from the member's own store,
// without raft or disk (Status is slower: it sizes the database).
func (e *etcdSystem) floorCall(ctx context.Context) error {
	_, err := e.c.Get(ctx, "/lockbench/floor", clientv3.WithSerializable())
	return err
}

// etcdV3LockSystem drives etcd's v3lock service (the Lock RPC that etcdctl
// lock uses) instead of the client-side concurrency.Mutex: one RPC to lock
// and one to unlock, with a lease per session.
type etcdV3LockSystem struct{ *etcdSystem }

func (e etcdV3LockSystem) newSession(ctx context.Context, ttl time.Duration) (session, error) {
	s, err := concurrency.NewSession(e.c, concurrency.WithTTL(int(ttl/time.Second)), concurrency.WithContext(context.Background()))
	if err != nil {
		return nil, err
	}
	return v3lockSession{s: s, lc: v3lockpb.NewLockClient(e.c.ActiveConnection())}, nil
}

type v3lockSession struct {
	s  *concurrency.Session
	lc v3lockpb.LockClient
}

func (s v3lockSession) mutex(name string) mutex {
	return &v3lockMutex{s: s, name: []byte("/lockbench/v3lock/" + name)}
}
func (s v3lockSession) close(ctx context.Context) error { return s.s.Close() }
func (s v3lockSession) lost() <-chan struct{}           { return s.s.Done() }

type v3lockMutex struct {
	s    v3lockSession
	name []byte
	key  []byte
	rev  int64
}

func (m *v3lockMutex) lock(ctx context.Context) error {
	r, err := m.s.lc.Lock(ctx, &v3lockpb.LockRequest{Name: m.name, Lease: int64(m.s.s.Lease())})
	if err != nil {
		return err
	}
	m.key, m.rev = r.Key, r.Header.GetRevision()
	return nil
}

// tryLock: the v3lock service has no try; the workload skips it.
func (m *v3lockMutex) tryLock(ctx context.Context) (bool, error) {
	return false, errors.New("etcd's v3lock service has no try-lock")
}

func (m *v3lockMutex) unlock(ctx context.Context) error {
	_, err := m.s.lc.Unlock(ctx, &v3lockpb.UnlockRequest{Key: m.key})
	return err
}
func (m *v3lockMutex) token() uint64 { return uint64(m.rev) }
