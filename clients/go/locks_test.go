package lockd_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
	"github.com/lockd-io/lockd/internal/testcluster"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
)

func TestSemaphoreRWMutexMultiLock(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	_, eps := cluster(t, 1)
	c := newClient(t, eps)
	ctx := context.Background()
	ss := []*lockd.Session{newSession(t, c, 2*time.Second, "a"), newSession(t, c, 2*time.Second, "b"), newSession(t, c, 2*time.Second, "c")}

	// A semaphore of two: two slots, the third waits.
	var sem []*lockd.Mutex
	for _, s := range ss {
		sem = append(sem, lockd.NewSemaphore(s, "sem", 2))
	}
	for _, m := range sem[:2] {
		if ok, err := m.TryLock(ctx); !ok || err != nil {
			t.Fatalf("semaphore slot: %v %v", ok, err)
		}
	}
	if ok, _ := sem[2].TryLock(ctx); ok {
		t.Fatal("a third holder of a two-slot semaphore")
	}
	if err := sem[0].Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := sem[2].TryLock(ctx); !ok || err != nil {
		t.Fatalf("a freed slot: %v %v", ok, err)
	}

	// Read-write: two readers together, the writer waits for both, and a
	// reader arriving while the writer waits queues behind it (no barging,
	// though the lock has reader slots free), and is granted only after the
	// writer has held and released the lock.
	rd := newSession(t, c, 2*time.Second, "d")
	r1, r2, w := lockd.NewRWMutex(ss[0], "rw", 10), lockd.NewRWMutex(ss[1], "rw", 10), lockd.NewRWMutex(ss[2], "rw", 10)
	r3 := lockd.NewRWMutex(rd, "rw", 10)
	if err := r1.RLock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r2.RLock(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, _ := w.Writer().TryLock(ctx); ok {
		t.Fatal("a writer beside two readers")
	}
	queue := func(d *lockdv1.DescribeResponse) (holders, waiters []uint64) {
		for _, h := range d.GetHolders() {
			holders = append(holders, h.GetLeaseId())
		}
		for _, w := range d.GetWaiters() {
			waiters = append(waiters, w.GetLeaseId())
		}
		return holders, waiters
	}
	waitQueue := func(what string, wantHolders, wantWaiters []uint64) {
		t.Helper()
		testcluster.Eventually(t, 10*time.Second, what, func() error {
			d, err := c.Describe(ctx, "rw")
			if err != nil {
				return err
			}
			h, wt := queue(d)
			slices.Sort(h)
			if !slices.Equal(h, wantHolders) || !slices.Equal(wt, wantWaiters) {
				return fmt.Errorf("holders %v waiters %v, want holders %v waiters %v", h, wt, wantHolders, wantWaiters)
			}
			return nil
		})
	}
	wrote := make(chan error, 1)
	go func() { wrote <- w.Lock(ctx) }()
	readers := []uint64{ss[0].ID(), ss[1].ID()}
	slices.Sort(readers)
	waitQueue("the writer queued", readers, []uint64{ss[2].ID()})
	read := make(chan error, 1)
	go func() { read <- r3.RLock(ctx) }()
	waitQueue("the late reader queued behind the writer", readers, []uint64{ss[2].ID(), rd.ID()})
	if ok, _ := lockd.NewRWMutex(ss[0], "rw-other", 10).Reader().TryLock(ctx); !ok {
		t.Fatal("an unrelated lock is blocked")
	}
	r1.RUnlock(ctx)
	r2.RUnlock(ctx)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	wtok := w.Writer().Token()
	waitQueue("the writer holds, the late reader still waits", []uint64{ss[2].ID()}, []uint64{rd.ID()})
	select {
	case err := <-read:
		t.Fatalf("the late reader was granted (%v) while the writer holds the lock", err)
	default:
	}
	if err := w.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-read:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the late reader was not granted within 10s of the writer's release")
	}
	if r3.Reader().Token() <= wtok {
		t.Fatalf("the late reader's token %d is not after the writer's %d", r3.Reader().Token(), wtok)
	}
	if err := r3.RUnlock(ctx); err != nil {
		t.Fatal(err)
	}

	// Multi-lock: all or none, one token for all.
	ml := lockd.NewMultiLock(ss[0], []string{"acct/1", "acct/2"})
	if err := ml.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	toks := ml.Tokens()
	if len(toks) != 2 || toks["acct/1"] == 0 || toks["acct/1"] != toks["acct/2"] {
		t.Fatalf("multi-lock tokens %v", toks)
	}
	if ok, _ := lockd.NewMutex(ss[1], "acct/2").TryLock(ctx); ok {
		t.Fatal("a lock of a held multi-lock was granted to another")
	}
	if err := ml.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, _ := lockd.NewMutex(ss[1], "acct/2").TryLock(ctx); !ok {
		t.Fatal("the multi-lock's locks were not released")
	}
}

// Many goroutines of one client lock and unlock at once, on the client's
// one call stream: every call succeeds, and each grant's token is above
// the one before on its lock.
func TestConcurrentLocksShareOneStream(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	_, eps := cluster(t, 1)
	c := newClient(t, eps)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const workers, rounds = 64, 20
	s := newSession(t, c, 10*time.Second, "many")
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			m := lockd.NewMutex(s, fmt.Sprintf("sdk/many/%d", w))
			var last uint64
			for range rounds {
				if err := m.Lock(ctx); err != nil {
					errs <- err
					return
				}
				if m.Token() <= last {
					errs <- fmt.Errorf("token %d after %d", m.Token(), last)
					return
				}
				last = m.Token()
				if err := m.Unlock(ctx); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
