package locks

import (
	"flag"
	"fmt"
	"runtime"
	"testing"
	"time"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
)

var (
	scale      = flag.Bool("scale", false, "run the million-lock scale test")
	scaleLocks = flag.Int("scale.locks", 1_000_000, "locks the scale test holds")
)

// A table of a million held locks: its heap, and how long a snapshot and a
// restore take (the node takes snapshots on its raft loop; a restart
// restores one).
func TestScaleMillionLocks(t *testing.T) {
	if testing.Short() || !*scale {
		t.Skip("run with -scale")
	}
	h := newHarness(t)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	n := *scaleLocks
	for l := 0; l < n/MaxPerLease; l++ {
		g := cmdGrant(time.Minute, "")
		g.ProposedUnixNano = h.now
		lease := h.ok(h.raw(encode(g))).LeaseID
		for i := 0; i < MaxPerLease; i += MaxLocksPerAcquire {
			names := make([]string, 0, MaxLocksPerAcquire)
			for j := i; j < min(MaxPerLease, i+MaxLocksPerAcquire); j++ {
				names = append(names, fmt.Sprintf("bench/hold/%d/%d", l, j))
			}
			// raw, not apply: checking every invariant after each command
			// would walk the whole table a million times.
			c := cmdAcquire(&statev1.Acquire{LeaseId: lease, Names: names})
			c.ProposedUnixNano = h.now
			h.ok(h.raw(encode(c)))
		}
		h.events, h.last = nil, nil
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("%d held locks: heap %d MiB", h.tab.Stats().Grants, (after.HeapAlloc-before.HeapAlloc)>>20)
	start := time.Now()
	snap, err := h.tab.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot: %d MiB in %v", len(snap)>>20, time.Since(start))
	start = time.Now()
	r := NewTable()
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	t.Logf("restore: %v", time.Since(start))
}
