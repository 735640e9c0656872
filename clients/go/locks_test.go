package lockd_test

import (
	"context"
	"testing"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
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
	// reader behind the waiting writer does not barge.
	r1, r2, w := lockd.NewRWMutex(ss[0], "rw", 10), lockd.NewRWMutex(ss[1], "rw", 10), lockd.NewRWMutex(ss[2], "rw", 10)
	if err := r1.RLock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r2.RLock(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, _ := w.Writer().TryLock(ctx); ok {
		t.Fatal("a writer beside two readers")
	}
	wrote := make(chan error, 1)
	go func() { wrote <- w.Lock(ctx) }()
	time.Sleep(100 * time.Millisecond)
	if ok, _ := lockd.NewRWMutex(ss[0], "rw-other", 10).Reader().TryLock(ctx); !ok {
		t.Fatal("an unrelated lock is blocked")
	}
	r1.RUnlock(ctx)
	r2.RUnlock(ctx)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	w.Unlock(ctx)

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
