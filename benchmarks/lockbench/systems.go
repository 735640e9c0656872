package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// system is a lock service under test, driven through its own client
// library as its users would.
type system interface {
	newSession(ctx context.Context, ttl time.Duration) (session, error)
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
	case "etcd":
		var urls []string
		for _, e := range endpoints {
			if !strings.Contains(e, "://") {
				e = "http://" + e
			}
			urls = append(urls, e)
		}
		c, err := clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 5 * time.Second})
		if err != nil {
			return nil, err
		}
		return &etcdSystem{c: c, endpoints: urls}, nil
	}
	return nil, fmt.Errorf("unknown system %q (lockd or etcd)", kind)
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
