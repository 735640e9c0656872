package node

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestSingleNodeProposeAndRestart(t *testing.T) {
	c := newTestCluster(t, 1, nil, func(cfg *Config) { cfg.SnapshotEntries = 50; cfg.CompactionMargin = 10 })
	tn := c.waitLeader(5 * time.Second)
	ctx := context.Background()
	for op := uint64(1); op <= 120; op++ {
		if err := propose(ctx, tn.current(), op); err != nil {
			t.Fatalf("propose %d: %v", op, err)
		}
	}
	if err := tn.current().ReadIndex(ctx); err != nil {
		t.Fatalf("read index: %v", err)
	}
	before := tn.sm.history()
	c.crash(tn)
	c.start(tn)
	c.waitLeader(5 * time.Second)
	if err := tn.current().ReadIndex(ctx); err != nil {
		t.Fatalf("read index after restart: %v", err)
	}
	after := tn.sm.history()
	if len(after) != 120 || len(before) != 120 {
		t.Fatalf("applied %d ops before restart, %d after; want 120", len(before), len(after))
	}
	for i := range after {
		if after[i] != uint64(i+1) {
			t.Fatalf("op %d at position %d after restart", after[i], i)
		}
	}
	st, err := tn.current().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != "leader" || len(st.Members) != 1 || st.Members[0].Name != "n1" || st.SnapshotIndex == 0 || st.FirstIndex <= 1 {
		t.Fatalf("unexpected status after restart: %+v", st)
	}
}

func TestProposeWithoutQuorumFails(t *testing.T) {
	faults := newNetFaults(1)
	c := newTestCluster(t, 3, faults, nil)
	l := c.waitLeader(5 * time.Second)
	faults.isolate([]uint64{l.current().ID()}, c.ids)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := propose(ctx, l.current(), 1)
	if err == nil {
		t.Fatal("an isolated leader committed a proposal")
	}
	if err := l.current().ReadIndex(ctx); err == nil {
		t.Fatal("an isolated leader served a linearizable read")
	}
	faults.heal()
	nl := c.waitLeader(5 * time.Second)
	if err := propose(context.Background(), nl.current(), 2); err != nil {
		t.Fatalf("propose after heal: %v", err)
	}
}

func TestFollowerProposesAndReads(t *testing.T) {
	c := newTestCluster(t, 3, nil, nil)
	l := c.waitLeader(5 * time.Second)
	f := c.follower(l)
	ctx := context.Background()
	for op := uint64(1); op <= 50; op++ {
		if err := propose(ctx, f.current(), op); err != nil {
			t.Fatalf("propose via follower: %v", err)
		}
	}
	// After the proposal returns on the leader, a linearizable read on a
	// follower must see it.
	if err := propose(ctx, l.current(), 51); err != nil {
		t.Fatal(err)
	}
	if err := f.current().ReadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if h := f.sm.history(); len(h) != 51 || h[50] != 51 {
		t.Fatalf("follower read after ReadIndex saw %d ops", len(h))
	}
}

func TestLaggingFollowerCatchesUpBySnapshot(t *testing.T) {
	c := newTestCluster(t, 3, nil, func(cfg *Config) { cfg.SnapshotEntries = 100; cfg.CompactionMargin = 20 })
	l := c.waitLeader(5 * time.Second)
	lag := c.follower(l)
	c.crash(lag)
	ctx := context.Background()
	for op := uint64(1); op <= 500; op++ {
		if err := propose(ctx, l.current(), op); err != nil {
			t.Fatalf("propose %d: %v", op, err)
		}
	}
	c.start(lag)
	waitConverged(t, c, 10*time.Second)
	if h := lag.sm.history(); len(h) != 500 {
		t.Fatalf("lagging follower has %d ops, want 500", len(h))
	}
	st, err := lag.current().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.SnapshotIndex == 0 {
		t.Fatalf("the follower caught up without a snapshot: %+v", st)
	}
}

func TestTransferLeadership(t *testing.T) {
	c := newTestCluster(t, 3, nil, nil)
	l := c.waitLeader(5 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.current().TransferLeadership(ctx); err != nil {
		t.Fatal(err)
	}
	nl := c.waitLeader(5 * time.Second)
	if nl == l {
		t.Fatal("leadership did not move")
	}
}

func TestStoppedNodeFailsRequests(t *testing.T) {
	c := newTestCluster(t, 1, nil, nil)
	tn := c.waitLeader(5 * time.Second)
	n := tn.current()
	c.crash(tn)
	if err := propose(context.Background(), n, 1); !errors.Is(err, ErrStopped) {
		t.Fatalf("propose on a stopped node: %v, want ErrStopped", err)
	}
}

// A proposal a follower forwarded to a leader that dies before appending it
// is lost without a word; the follower fails it as soon as it sees the
// leader change, rather than leaving its caller to time out.
func TestForwardedProposalFailsWhenLeaderGoes(t *testing.T) {
	faults := newNetFaults(1)
	c := newTestCluster(t, 3, faults, nil)
	l := c.waitLeader(5 * time.Second)
	f := c.follower(l)
	// The follower's messages to the leader are lost: the forwarded
	// proposal never arrives. Then the leader dies.
	faults.mu.Lock()
	faults.cut[[2]uint64{f.current().ID(), l.current().ID()}] = true
	faults.mu.Unlock()
	errc := make(chan error, 1)
	start := time.Now()
	go func() { errc <- propose(context.Background(), f.current(), 1) }()
	time.Sleep(100 * time.Millisecond)
	c.crash(l)
	faults.heal()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrLeaderChanged) {
			t.Fatalf("the forwarded proposal ended with %v, want ErrLeaderChanged", err)
		}
		t.Logf("failed after %v", time.Since(start))
	case <-time.After(10 * time.Second):
		t.Fatal("the forwarded proposal still waits 10s after its leader died")
	}
	// The cluster goes on without the dead leader.
	c.waitLeader(10 * time.Second)
	if err := propose(context.Background(), f.current(), 2); err != nil {
		t.Fatal(err)
	}
}

// slowSnapshots is a state machine whose snapshots take a long time, as a
// table of a million locks does.
type slowSnapshots struct {
	StateMachine
	delay time.Duration
}

func (s slowSnapshots) Snapshot() ([]byte, error) {
	time.Sleep(s.delay)
	return s.StateMachine.Snapshot()
}

// A snapshot that takes five election timeouts stalls neither heartbeats
// nor persistence: the leader keeps its term, and proposals go on.
func TestSlowSnapshotDoesNotStallRaft(t *testing.T) {
	c := newTestCluster(t, 3, nil, func(cfg *Config) {
		cfg.SnapshotEntries = 50
		cfg.CompactionMargin = 10
		cfg.StateMachine = slowSnapshots{cfg.StateMachine, 5 * cfg.ElectionTimeout}
	})
	l := c.waitLeader(5 * time.Second)
	term := l.current().term.Load()
	for op := range uint64(200) {
		if err := propose(context.Background(), l.current(), op+1); err != nil {
			t.Fatal(err)
		}
	}
	if got := l.current().term.Load(); got != term || c.leader() != l {
		t.Fatalf("leadership changed during slow snapshots: term %d → %d", term, got)
	}
	for _, tn := range c.nodes {
		waitUntil(t, 30*time.Second, tn.name+" took a snapshot", func() error {
			if tn.current().snapIndex.Load() == 0 {
				return errors.New("no snapshot index")
			}
			return nil
		})
	}
}

// waitUntil polls cond until it returns nil, failing the test with its
// last error after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Under endless writes the data dir stays bounded: snapshots and log
// compaction keep the log to SnapshotEntries+CompactionMargin entries, and
// pebble reclaims what compaction deleted. The bound is the README's for
// these settings and a state of steady size: pebble's WAL and memtables
// (2 × 32 MiB), 15,000 small entries, a few snapshots, and as much again
// for sstables waiting for a compaction: 128 MiB.
func TestDiskStaysBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("a million proposals")
	}
	c := newTestCluster(t, 1, nil, func(cfg *Config) {
		cfg.SnapshotEntries = 10000
		cfg.CompactionMargin = 5000
		cfg.StateMachine = new(countSM) // state of a fixed size, as a table of steady size
	})
	l := c.waitLeader(5 * time.Second).current()
	const total, workers = 1_000_000, 64
	const bound = 128 << 20
	var next atomic.Uint64
	var peak atomic.Uint64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				op := next.Add(1)
				if op > total {
					return
				}
				if err := propose(context.Background(), l, op); err != nil {
					t.Error(err)
					return
				}
				if op%50_000 == 0 {
					du := l.store.DiskUsage()
					if du > peak.Load() {
						peak.Store(du)
					}
					if op%200_000 == 0 {
						t.Logf("after %d proposals: %d MiB", op, du>>20)
					}
				}
			}
		}()
	}
	wg.Wait()
	du := l.store.DiskUsage()
	t.Logf("%d proposals: data dir %d MiB at the end, %d MiB at most", total, du>>20, max(du, peak.Load())>>20)
	if max(du, peak.Load()) > bound {
		t.Fatalf("the data dir reached %d MiB, over the bound of %d MiB", max(du, peak.Load())>>20, bound>>20)
	}
	if first, _ := l.store.FirstIndex(); first < total-20_000 {
		t.Fatalf("the log still starts at %d after %d entries", first, total)
	}
}

// countSM counts the operations it applied: a state machine whose state
// does not grow with its history.
type countSM struct{ n atomic.Uint64 }

func (s *countSM) Apply(index, term uint64, cmd []byte) any { s.n.Add(1); return index }
func (s *countSM) Snapshot() ([]byte, error) {
	return binary.BigEndian.AppendUint64(nil, s.n.Load()), nil
}
func (s *countSM) Restore(data []byte) error {
	if len(data) != 8 {
		return errors.New("countSM: bad snapshot")
	}
	s.n.Store(binary.BigEndian.Uint64(data))
	return nil
}

// Large entries trigger snapshots by their size, and the log kept below a
// snapshot is bounded in bytes as well as in entries: a log of 32 KiB
// entries stays about as small on disk as one of small entries.
func TestSnapshotBySize(t *testing.T) {
	c := newTestCluster(t, 1, nil, func(cfg *Config) {
		cfg.SnapshotEntries = 1 << 30 // never by count
		cfg.SnapshotBytes = 1 << 20
		cfg.CompactionMargin = 5000
		cfg.StateMachine = new(countSM)
	})
	l := c.waitLeader(5 * time.Second).current()
	const entries, size = 2000, 32 << 10 // 64 MiB in all
	cmd := make([]byte, size)
	for i := range entries {
		cmd[0] = byte(i)
		if _, err := l.Propose(context.Background(), cmd); err != nil {
			t.Fatal(err)
		}
	}
	// Snapshots are saved in the background: wait for the last one.
	waitUntil(t, 10*time.Second, "the last snapshot saved", func() error {
		applied := l.applied.Load()
		snap := l.snapIndex.Load()
		if applied-snap > (1<<20)/size+1 {
			return fmt.Errorf("last snapshot at %d with %d applied: more than 1 MiB of entries since", snap, applied)
		}
		first, err := l.store.FirstIndex()
		if err != nil {
			t.Fatal(err)
		}
		// Up to the snapshot, as many entries as fit in 512 KiB are kept:
		// 15 of 32 KiB and 8 bytes (the proposal id), not the 5000 the
		// count alone would keep, and not none.
		if kept := snap - first + 1; first > snap || kept != (512<<10)/(size+8) {
			return fmt.Errorf("log starts at %d, %d entries up to the snapshot at %d; want %d", first, kept, snap, (512<<10)/(size+8))
		}
		return nil
	})
}

// bigState is a state machine whose snapshots are large, as a table of
// many locks has.
type bigState struct {
	countSM
	size  int
	taken atomic.Int64 // snapshots
}

func (s *bigState) Snapshot() ([]byte, error) {
	s.taken.Add(1)
	b, _ := s.countSM.Snapshot()
	return append(b, make([]byte, s.size)...), nil
}

func (s *bigState) Restore(data []byte) error { return s.countSM.Restore(data[:8]) }

// A large state is snapshotted once the entries since its last snapshot
// amount to a quarter of its size, however many entries that is: the
// count alone would encode a table of a million locks every few seconds
// under load, each time for about a second.
func TestLargeStateSnapshotsByItsSize(t *testing.T) {
	sm := &bigState{size: 1 << 20}
	c := newTestCluster(t, 1, nil, func(cfg *Config) {
		cfg.SnapshotEntries = 50
		cfg.CompactionMargin = 10
		cfg.StateMachine = sm
	})
	l := c.waitLeader(5 * time.Second).current()
	cmd := make([]byte, 1024)
	proposeN := func(n int) {
		for range n {
			if _, err := l.Propose(context.Background(), cmd); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The first snapshot comes by count; 200 KiB of entries after it are
	// less than a quarter of its MiB.
	proposeN(250)
	waitUntil(t, 10*time.Second, "the first snapshot", func() error {
		if s := l.snapIndex.Load(); s == 0 || s > 100 {
			return fmt.Errorf("snapshot index %d, want one by count, at about 50", s)
		}
		return nil
	})
	first := l.snapIndex.Load()
	// 100 more KiB make more than a quarter of it: 255 entries of 1 KiB
	// and a proposal id.
	proposeN(100)
	waitUntil(t, 10*time.Second, "a second snapshot", func() error {
		if s := l.snapIndex.Load(); s < first+255 {
			return fmt.Errorf("snapshot index %d, want one 255 entries or more after %d", s, first)
		}
		return nil
	})
	// By count alone there would have been six by now.
	if n := sm.taken.Load(); n != 2 {
		t.Fatalf("%d snapshots taken, want 2", n)
	}
}

// A member added after the log was compacted catches up by snapshot at
// once: the snapshot the leader sends must name it (raft refuses one that
// does not), so a membership change is followed by a snapshot that
// records it, rather than waiting for the next one by count. Cut off, the
// learner keeps the leader it knew (it never campaigns), and
// LeaderSilence tells how long it has not heard from it.
func TestNewMemberCatchesUpAfterCompaction(t *testing.T) {
	faults := newNetFaults(1)
	c := newTestCluster(t, 3, faults, func(cfg *Config) { cfg.SnapshotEntries = 100; cfg.CompactionMargin = 20 })
	l := c.waitLeader(5 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for op := uint64(1); op <= 250; op++ {
		if err := propose(ctx, l.current(), op); err != nil {
			t.Fatalf("propose %d: %v", op, err)
		}
	}
	st, err := l.current().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.SnapshotIndex == 0 {
		t.Fatal("no snapshot was taken")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tn := &testNode{name: "n4", dir: filepath.Join(t.TempDir(), "n4"), url: "http://" + ln.Addr().String()}
	tn.srv = &http.Server{Handler: tn, Protocols: new(http.Protocols)}
	tn.srv.Protocols.SetHTTP1(true)
	tn.srv.Protocols.SetUnencryptedHTTP2(true)
	go tn.srv.Serve(ln)
	t.Cleanup(func() { c.crash(tn); tn.srv.Close() })
	if err := l.current().AddMember(ctx, tn.name, tn.url, true); err != nil {
		t.Fatal(err)
	}
	// No more proposals: the member must catch up from what is there.
	join := c.tweak
	c.peers = append(c.peers, Peer{Name: tn.name, URL: tn.url})
	c.tweak = func(cfg *Config) {
		join(cfg)
		cfg.Join, cfg.ClusterID = true, st.ClusterID
	}
	c.start(tn)
	c.tweak = join
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, want := tn.current().Applied(), l.current().Applied()
		if got >= want && len(tn.sm.history()) == 250 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new member applied %d of %d (%d ops) within 10s", got, want, len(tn.sm.history()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s := tn.current().LeaderSilence(); s > time.Second {
		t.Fatalf("a learner in touch with its leader reports %v of silence", s)
	}
	faults.isolate([]uint64{MemberID(tn.name)}, append(c.ids, MemberID(tn.name)))
	time.Sleep(3 * 200 * time.Millisecond) // three election timeouts
	if lead, s := tn.current().Leader(), tn.current().LeaderSilence(); lead == 0 || s < 400*time.Millisecond {
		t.Fatalf("cut off learner: leader %x, silence %v; want the old leader kept and its silence told", lead, s)
	}
}

// TestSingleNodeElectsItselfOnASlowDisk: a lone voter's vote for itself
// waits for an fsync slower than several ticks; the node must not start its
// election over meanwhile (it did, once storage writes left the loop).
func TestSingleNodeElectsItselfOnASlowDisk(t *testing.T) {
	f := newNetFaults(1)
	f.diskDelay.Store(int64(100 * time.Millisecond)) // five heartbeat ticks
	c := newTestCluster(t, 1, f, nil)
	c.waitLeader(10 * time.Second)
}

// TestRemovedMemberLearnsOfItsRemoval: the leader queues the commit that
// removes a member in the same turn as it applies the removal and drops the
// member's link; the link must still deliver it, slow as it is, or the
// member never applies its own removal.
func TestRemovedMemberLearnsOfItsRemoval(t *testing.T) {
	f := newNetFaults(7)
	c := newTestCluster(t, 3, f, nil)
	l := c.waitLeader(5 * time.Second)
	gone := c.follower(l)
	f.set(0, 40*time.Millisecond) // every batch waits up to 40ms to be sent
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.current().RemoveMember(ctx, gone.name); err != nil {
		t.Fatalf("removing %s: %v", gone.name, err)
	}
	select {
	case <-gone.current().Removed():
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not apply its own removal", gone.name)
	}
}
