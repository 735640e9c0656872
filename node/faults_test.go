package node

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// history is what the clients of a fault run saw: when each operation was
// proposed, and when each acknowledged one was acknowledged (monotonic
// time since the run began).
type history struct {
	mu       sync.Mutex
	proposed map[uint64]time.Duration
	acked    map[uint64]time.Duration
}

// checkHistories checks the replicated log against the clients' view:
// every node applied the same operations in the same order, none twice,
// every acknowledged operation is among them, nothing was applied that no
// client proposed, and the order respects real time: an operation
// acknowledged before another was proposed comes first in the log (the
// condition that makes the log linearizable). It returns one line per
// anomaly.
func checkHistories(applied map[string][]uint64, proposed, acked map[uint64]time.Duration) []string {
	var anomalies []string
	var refName string
	var ref []uint64
	for name, ops := range applied {
		if len(ops) > len(ref) || (len(ops) == len(ref) && name < refName) {
			refName, ref = name, ops
		}
	}
	for name, ops := range applied {
		seen := map[uint64]int{}
		for i, op := range ops {
			if j, dup := seen[op]; dup {
				anomalies = append(anomalies, fmt.Sprintf("%s applied op %d twice (positions %d and %d)", name, op, j, i))
			}
			seen[op] = i
			if _, ok := proposed[op]; !ok {
				anomalies = append(anomalies, fmt.Sprintf("%s applied op %d that nobody proposed", name, op))
			}
		}
		if len(ops) != len(ref) {
			anomalies = append(anomalies, fmt.Sprintf("%s applied %d ops, %s applied %d", name, len(ops), refName, len(ref)))
		}
		for i := range min(len(ops), len(ref)) {
			if ops[i] != ref[i] {
				anomalies = append(anomalies, fmt.Sprintf("%s and %s diverge at position %d: op %d vs %d", name, refName, i, ops[i], ref[i]))
				break
			}
		}
	}
	in := map[uint64]bool{}
	for _, op := range ref {
		in[op] = true
	}
	for op := range acked {
		if !in[op] {
			anomalies = append(anomalies, fmt.Sprintf("acknowledged op %d was never applied", op))
		}
	}
	anomalies = append(anomalies, checkRealTime(ref, proposed, acked)...)
	slices.Sort(anomalies)
	return anomalies
}

// checkRealTime reports every applied operation that the log puts before an
// operation acknowledged before it was proposed. It walks the log's
// operations in the order they were proposed, keeping the latest log
// position among those acknowledged by then.
func checkRealTime(log []uint64, proposed, acked map[uint64]time.Duration) []string {
	pos := make(map[uint64]int, len(log))
	for i, op := range log {
		pos[op] = i
	}
	var done []uint64 // acknowledged and applied, by acknowledgement time
	for op := range acked {
		if _, ok := pos[op]; ok {
			done = append(done, op)
		}
	}
	slices.SortFunc(done, func(a, b uint64) int { return cmp.Compare(acked[a], acked[b]) })
	byCall := slices.Clone(log)
	slices.SortFunc(byCall, func(a, b uint64) int { return cmp.Compare(proposed[a], proposed[b]) })
	var anomalies []string
	latest, latestOp := -1, uint64(0)
	next := 0
	for _, op := range byCall {
		for ; next < len(done) && acked[done[next]] < proposed[op]; next++ {
			if p := pos[done[next]]; p > latest {
				latest, latestOp = p, done[next]
			}
		}
		if latest > pos[op] {
			anomalies = append(anomalies, fmt.Sprintf("op %d is at log position %d, before op %d (position %d), which was acknowledged before op %d was proposed", op, pos[op], latestOp, latest, op))
		}
	}
	return anomalies
}

type faultRun struct {
	seed      uint64
	size      int
	clients   int
	duration  time.Duration
	maxAcked  int
	bugs      bugs
	snapEvery uint64
	margin    uint64 // entries kept below a snapshot; default snapEvery/2
}

type faultReport struct {
	proposed, acked int
	crashes         int
	partitions      int
	anomalies       []string
}

// runFaults drives clients against a cluster while a nemesis crashes and
// restarts nodes, partitions the network, drops and delays messages; then
// it heals everything, waits for the nodes to converge and checks the
// histories.
func runFaults(t *testing.T, r faultRun) faultReport {
	t.Helper()
	faults := newNetFaults(r.seed)
	c := newTestCluster(t, r.size, faults, func(cfg *Config) {
		cfg.SnapshotEntries = r.snapEvery
		cfg.CompactionMargin = r.snapEvery / 2
		if r.margin != 0 {
			cfg.CompactionMargin = r.margin
		}
		cfg.bugs = r.bugs
	})
	c.waitLeader(10 * time.Second)

	h := &history{proposed: map[uint64]time.Duration{}, acked: map[uint64]time.Duration{}}
	start := time.Now()
	var rep faultReport
	ctx, cancel := context.WithTimeout(context.Background(), r.duration)
	defer cancel()
	var nextOp atomic.Uint64
	var wg sync.WaitGroup
	for w := range r.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(r.seed, uint64(w)+100))
			for ctx.Err() == nil {
				h.mu.Lock()
				done := len(h.acked) >= r.maxAcked
				h.mu.Unlock()
				if done {
					return
				}
				tn := c.nodes[rng.IntN(len(c.nodes))]
				n := tn.current()
				if n == nil {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				op := nextOp.Add(1)
				h.mu.Lock()
				h.proposed[op] = time.Since(start)
				h.mu.Unlock()
				pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
				err := propose(pctx, n, op)
				pcancel()
				if err == nil {
					h.mu.Lock()
					h.acked[op] = time.Since(start)
					h.mu.Unlock()
				} else {
					time.Sleep(time.Duration(rng.IntN(10)) * time.Millisecond)
				}
			}
		}()
	}

	// The nemesis: one fault at a time, each held for a random while, with
	// at most one node down so the cluster can make progress between faults.
	rng := rand.New(rand.NewPCG(r.seed, 7))
	var down *testNode
	for ctx.Err() == nil {
		switch rng.IntN(6) {
		case 0, 1: // crash a node, the leader more often than not
			if down != nil {
				c.start(down)
				down = nil
				break
			}
			victim := c.nodes[rng.IntN(len(c.nodes))]
			if l := c.leader(); l != nil && rng.IntN(3) > 0 {
				victim = l
			}
			c.crash(victim)
			down = victim
			rep.crashes++
		case 2: // isolate one node, the leader more often than not
			victim := c.nodes[rng.IntN(len(c.nodes))]
			if l := c.leader(); l != nil && rng.IntN(2) == 0 {
				victim = l
			}
			faults.isolate([]uint64{MemberID(victim.name)}, c.ids)
			rep.partitions++
		case 3: // lossy, slow links
			faults.set(0.2*rng.Float64(), time.Duration(rng.IntN(20))*time.Millisecond)
		default:
			faults.heal()
		}
		sleepCtx(ctx, time.Duration(100+rng.IntN(400))*time.Millisecond)
	}
	wg.Wait()

	faults.heal()
	if down != nil {
		c.start(down)
	}
	c.waitLeader(20 * time.Second)
	// One more crash and restart of a follower, with nothing else going on,
	// so every run ends by recovering a node from its own disk.
	for _, tn := range c.nodes {
		if c.leader() != tn {
			c.crash(tn)
			c.start(tn)
			rep.crashes++
			break
		}
	}
	c.waitLeader(20 * time.Second)
	// Drive one more write so every node learns the final commit index.
	if l := c.leader(); l != nil {
		op := nextOp.Add(1)
		h.proposed[op] = time.Since(start)
		wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := propose(wctx, l.current(), op); err == nil {
			h.acked[op] = time.Since(start)
		}
		wcancel()
	}
	waitConverged(t, c, 30*time.Second)

	applied := map[string][]uint64{}
	for _, tn := range c.nodes {
		applied[tn.name] = tn.sm.history()
	}
	rep.proposed, rep.acked = len(h.proposed), len(h.acked)
	rep.anomalies = checkHistories(applied, h.proposed, h.acked)
	return rep
}

// waitConverged waits until every node has applied up to the same index.
func waitConverged(t *testing.T, c *testCluster, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var idx []uint64
		for _, tn := range c.nodes {
			idx = append(idx, tn.current().Applied())
		}
		if slices.Min(idx) == slices.Max(idx) && idx[0] > 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nodes did not converge within %v", timeout)
}

func TestFaultsExactlyOnceInOrder(t *testing.T) {
	r := faultRun{seed: uint64(time.Now().UnixNano()), size: 3, clients: 8, duration: 12 * time.Second, maxAcked: 3000, snapEvery: 500}
	if testing.Short() {
		r.duration = 4 * time.Second
	}
	t.Logf("seed %d", r.seed)
	rep := runFaults(t, r)
	t.Logf("proposed %d, acknowledged %d, crashes %d, partitions %d", rep.proposed, rep.acked, rep.crashes, rep.partitions)
	for _, a := range rep.anomalies {
		t.Error(a)
	}
	if rep.acked < 1000 {
		t.Errorf("only %d proposals acknowledged: the run exercised too little", rep.acked)
	}
}

// The checker must be able to fail: each deliberately broken node build must
// be caught.
func TestFaultsCheckerCatchesBrokenBuilds(t *testing.T) {
	for _, tc := range []struct {
		name string
		bugs bugs
	}{
		{"ack-before-commit", bugs{ackOnPropose: true}},
		// The log is kept whole, so a restarted node catches up from its own
		// log rather than by a snapshot that would paper over the bug.
		{"replay-applied-entries", bugs{replayFromLogStart: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := runFaults(t, faultRun{seed: uint64(time.Now().UnixNano()), size: 3, clients: 8, duration: 6 * time.Second, maxAcked: 3000, snapEvery: 200, margin: 1 << 30, bugs: tc.bugs})
			t.Logf("proposed %d, acknowledged %d, crashes %d; %d anomalies", rep.proposed, rep.acked, rep.crashes, len(rep.anomalies))
			if len(rep.anomalies) == 0 {
				t.Fatal("the checker found nothing wrong with a broken build")
			}
			t.Logf("first anomaly: %s", rep.anomalies[0])
		})
	}
}

func TestCheckHistories(t *testing.T) {
	// Ops 1, 2, 3 were proposed at 10, 20, 30 and each acknowledged 5 later;
	// op 4 was proposed at 100, after all of them were acknowledged.
	proposed := map[uint64]time.Duration{1: 10, 2: 20, 3: 30, 4: 100}
	all := map[uint64]time.Duration{1: 15, 2: 25, 3: 35}
	for _, tc := range []struct {
		name    string
		applied map[string][]uint64
		acked   map[uint64]time.Duration
		want    int
	}{
		{"agree", map[string][]uint64{"a": {1, 2, 3}, "b": {1, 2, 3}}, map[uint64]time.Duration{1: 15, 3: 35}, 0},
		{"unacked may be lost", map[string][]uint64{"a": {1, 3}, "b": {1, 3}}, map[uint64]time.Duration{1: 15}, 0},
		{"duplicate", map[string][]uint64{"a": {1, 2, 2}, "b": {1, 2, 2}}, nil, 2},
		{"order", map[string][]uint64{"a": {1, 2, 3}, "b": {1, 3, 2}}, nil, 1},
		{"lost ack", map[string][]uint64{"a": {1}, "b": {1}}, map[uint64]time.Duration{2: 25}, 1},
		{"lagging", map[string][]uint64{"a": {1, 2}, "b": {1}}, nil, 1},
		{"phantom", map[string][]uint64{"a": {9}}, nil, 1},
		// Every node agrees, but op 4 went in before ops acknowledged
		// before it was proposed.
		{"real time", map[string][]uint64{"a": {1, 4, 2, 3}, "b": {1, 4, 2, 3}}, all, 1},
		{"concurrent ops in any order", map[string][]uint64{"a": {2, 1, 3}}, map[uint64]time.Duration{1: 40, 2: 50}, 0},
		// An unacknowledged op may take effect any time after it was proposed.
		{"unacknowledged op late", map[string][]uint64{"a": {1, 3, 2}}, map[uint64]time.Duration{1: 15}, 0},
		{"unacknowledged op too early", map[string][]uint64{"a": {3, 1, 2}}, map[uint64]time.Duration{1: 15}, 1},
	} {
		if got := checkHistories(tc.applied, proposed, tc.acked); len(got) != tc.want {
			t.Errorf("%s: %d anomalies %q, want %d", tc.name, len(got), got, tc.want)
		}
	}
}
