package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
)

// The table's limits (locks.MaxPerLease and locks.MaxLocksPerAcquire): the
// benchmarks speak to lockd as a client, without its internals.
const (
	maxPerLease        = 10000
	maxLocksPerAcquire = 64
)

// holdMain takes n locks and holds them: sessions of up to
// maxPerLease locks each, taken maxLocksPerAcquire at a time by
// 16 workers. It prints one result line once all are held, then keeps them
// (and its sessions alive) until the duration ends, so that the nodes'
// memory and restart can be measured under them. lockd only: it measures
// lockd's table, not a comparison.
func holdMain(endpoints []string, n int, ttl, duration time.Duration) {
	c, err := lockd.New(endpoints)
	if err != nil {
		fail(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	start := time.Now()
	perLease := maxPerLease
	type batch struct {
		s     *lockd.Session
		names []string
	}
	work := make(chan batch, 64)
	var held, errs atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range work {
				m := lockd.NewMultiLock(b.s, b.names)
				got, err := m.LockWithin(ctx, 0)
				if err != nil || !got {
					errs.Add(1)
					sample(fmt.Errorf("multi-lock of %d: granted %v, %v", len(b.names), got, err))
					continue
				}
				held.Add(int64(len(b.names)))
			}
		}()
	}
	var sessions []*lockd.Session
	for l := 0; l*perLease < n; l++ {
		s, err := c.NewSession(ctx, lockd.WithTTL(ttl), lockd.WithOwner(fmt.Sprint("lockbench-hold-", l)))
		if err != nil {
			fail(err)
		}
		sessions = append(sessions, s)
		for i := l * perLease; i < min(n, (l+1)*perLease); i += maxLocksPerAcquire {
			var names []string
			for j := i; j < min(n, (l+1)*perLease, i+maxLocksPerAcquire); j++ {
				names = append(names, fmt.Sprintf("bench/hold/%d/%d", l, j))
			}
			work <- batch{s, names}
		}
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(start)
	json.NewEncoder(os.Stdout).Encode(result{System: "lockd", Workload: "hold", Concurrency: 16,
		Seconds: elapsed.Seconds(), Ops: held.Load(), OpsPerSec: float64(held.Load()) / elapsed.Seconds(), Errors: errs.Load(),
		Sessions: len(sessions)})
	<-ctx.Done()
	for _, s := range sessions {
		if s.Err() != nil {
			fmt.Fprintln(os.Stderr, "lockbench: a holding session was lost:", s.Err())
		}
	}
}

// caughtUpMain waits until the node at endpoint has applied everything the
// leader had applied when it started, and prints how long that took.
func caughtUpMain(endpoint string, leaderEndpoint string, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	leader, err := lockd.New([]string{leaderEndpoint}, lockd.WithBackoff(5*time.Millisecond, 20*time.Millisecond))
	if err != nil {
		fail(err)
	}
	st, err := leader.Status(ctx)
	if err != nil {
		fail(err)
	}
	target := st.GetAppliedIndex()
	node, err := lockd.New([]string{endpoint}, lockd.WithBackoff(5*time.Millisecond, 20*time.Millisecond))
	if err != nil {
		fail(err)
	}
	for {
		st, err := node.Status(ctx)
		if err == nil && st.GetAppliedIndex() >= target {
			fmt.Println(target)
			return
		}
		select {
		case <-ctx.Done():
			fail(fmt.Errorf("%s did not reach applied index %d in %v (last: %v, %v)", endpoint, target, timeout, st.GetAppliedIndex(), err))
		case <-time.After(10 * time.Millisecond):
		}
	}
}
