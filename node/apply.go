package node

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	peerv1 "github.com/lockd-io/lockd/proto/lockd/peer/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// maxApplyBacklog is how many committed entries may wait for the applier
// before the raft loop stops taking new proposals.
const maxApplyBacklog = 1 << 16

// applier applies committed entries to the state machine, and takes
// snapshots, on a goroutine of its own. The raft loop hands it each Ready's
// committed entries in order and goes on at once: a slow apply, or a
// snapshot of a large table that takes a second, then delays only the
// answers to proposals and reads, never raft's heartbeats, its elections or
// the persistence of new entries.
//
// The applier only encodes a snapshot, which needs the state machine to
// stand still; a goroutine of the snapshot's own writes it to the store and
// compacts the log, while the applier goes on applying. One snapshot is
// saved at a time.
type applier struct {
	workQueue[applyWork]
	progress chan struct{} // cap 1: the applied index moved (for the loop's reads)
	backlog  atomic.Int64  // entries pushed and not yet applied

	// Owned by the applier: the membership as of the applied index, which
	// its snapshots record.
	conf    *raftpb.ConfState
	members []*peerv1.Member
	// confChanged: a conf change was applied since the last snapshot.
	confChanged bool
	// Owned by the applier: the bytes of the entries applied since the last
	// snapshot, and the sizes of the last CompactionMargin entries applied,
	// newest at recent[(next-1) % len].
	sinceSnap uint64
	recent    []uint32
	next      uint64

	// Owned by the applier: the size of the state in the newest snapshot
	// taken or restored, and whether one is being saved; saved carries the
	// outcome.
	lastSnapBytes uint64
	saving        bool
	saved         chan snapshotSaved // cap 1
}

// snapshotSaved is the outcome of saving a snapshot.
type snapshotSaved struct {
	index uint64
	err   error
}

// sized records the size of an entry the applier applied.
func (a *applier) sized(n uint32, margin uint64) {
	if a.recent == nil {
		// Sizes beyond the ring are unknown, and margin then keeps the
		// count; margins this large are for tests that keep the whole log.
		a.recent = make([]uint32, min(max(margin, 1), 1<<16))
	}
	a.recent[a.next%uint64(len(a.recent))] = n
	a.next++
	a.sinceSnap += uint64(n)
}

// margin is how many of the newest applied entries to keep below a
// snapshot: at most maxEntries, and no more than maxBytes of them.
func (a *applier) margin(maxEntries, maxBytes uint64) uint64 {
	size := min(uint64(len(a.recent)), maxEntries)
	known := min(a.next, size)
	var sum uint64
	for k := range known {
		sum += uint64(a.recent[(a.next-1-k)%size])
		if sum > maxBytes {
			return k
		}
	}
	// Entries applied before this process started are of unknown size:
	// keep the count.
	return maxEntries
}

// applyWork is one Ready's share of the applier's work, in log order: a
// snapshot from the leader to restore first, if any, then the entries.
type applyWork struct {
	snap      *raftpb.SnapshotMetadata
	snapState []byte
	ents      []*raftpb.Entry
	// members is the membership after the snapshot or conf change at an
	// index, as the loop applied it.
	members map[uint64]membership
}

type membership struct {
	conf    *raftpb.ConfState
	members []*peerv1.Member
}

func membersOf(m map[uint64]*peerv1.Member) []*peerv1.Member {
	out := make([]*peerv1.Member, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func (a *applier) init() {
	a.workQueue.init()
	a.progress = make(chan struct{}, 1)
	a.saved = make(chan snapshotSaved, 1)
}

// push queues work; it never blocks.
func (a *applier) push(w applyWork) {
	if w.snap == nil && len(w.ents) == 0 {
		return
	}
	a.backlog.Add(int64(len(w.ents)))
	a.workQueue.push(w)
}

// applyLoop runs the applier until stop: work still queued then is dropped
// (it is in the log, and is applied again after a restart).
func (n *Node) applyLoop() {
	a := &n.apply
	defer close(a.done)
	defer func() {
		if a.saving {
			<-a.saved // the store outlives the node, not a write to it
		}
	}()
	for {
		queue, ok := a.take()
		if !ok {
			return
		}
		for _, w := range queue {
			select {
			case <-a.quit:
				return
			default:
			}
			if err := n.applyWork(w); err != nil {
				a.fail(err)
				return
			}
			a.backlog.Add(-int64(len(w.ents)))
			select {
			case a.progress <- struct{}{}:
			default:
			}
			if err := n.maybeSnapshot(); err != nil {
				a.fail(err)
				return
			}
		}
		// Also when woken by a save that ended: a membership change
		// applied during it is snapshotted now, not at the next entry.
		if err := n.maybeSnapshot(); err != nil {
			a.fail(err)
			return
		}
	}
}

func (n *Node) applyWork(w applyWork) error {
	a := &n.apply
	if w.snap != nil {
		if err := n.sm.Restore(w.snapState); err != nil {
			return fmt.Errorf("restoring snapshot from leader: %w", err)
		}
		idx := w.snap.GetIndex()
		m := w.members[idx]
		a.conf, a.members = m.conf, m.members
		n.snapIndex.Store(idx)
		n.applied.Store(idx)
		// The sizes recorded so far are of entries before the snapshot's
		// gap: forget them.
		a.sinceSnap, a.next, a.confChanged = 0, 0, false
		a.lastSnapBytes = uint64(len(w.snapState))
		n.metrics.snapshotBytes.Set(float64(len(w.snapState)))
		n.log.Info().Uint64("index", idx).Msg("restored snapshot from leader")
	}
	for _, e := range w.ents {
		if e.GetIndex() <= n.applied.Load() {
			continue // covered by the snapshot restored above
		}
		a.sized(uint32(len(e.GetData())), n.cfg.CompactionMargin)
		switch e.GetType() {
		case raftpb.EntryNormal:
			data := e.GetData()
			if len(data) < 8 {
				n.sm.Apply(e.GetIndex(), e.GetTerm(), nil)
				break
			}
			id := binary.BigEndian.Uint64(data)
			val := n.sm.Apply(e.GetIndex(), e.GetTerm(), data[8:])
			n.finish(id, val, nil)
		case raftpb.EntryConfChange, raftpb.EntryConfChangeV2:
			if m, ok := w.members[e.GetIndex()]; ok {
				a.conf, a.members = m.conf, m.members
			}
			a.confChanged = true
		}
		n.applied.Store(e.GetIndex())
	}
	return nil
}

// maybeSnapshot snapshots the state machine once SnapshotEntries entries,
// or SnapshotBytes of them, have been applied since the last snapshot, and
// compacts the log below it, keeping a margin for followers that lag a
// little. It runs on the applier, so the state machine stands still while
// it reads it.
//
// A snapshot costs as much as the state is large, so it also waits until
// the entries applied since the last one amount to a quarter of that
// one's size: the cost per entry applied then stays bounded whatever the
// size of the state (a million locks take a second to encode), and the log
// a restart replays stays a fraction of the snapshot it restores.
//
// A membership change is snapshotted at once, once the log has been
// compacted: a new member catches up from the leader's latest snapshot,
// and raft refuses a snapshot whose configuration does not name the
// member receiving it, so one taken before the member was added would be
// sent and refused until the next snapshot by count.
func (n *Node) maybeSnapshot() error {
	a := &n.apply
	if err := n.takeSaved(); err != nil || a.saving {
		return err
	}
	applied := n.applied.Load()
	membership := a.confChanged && n.snapIndex.Load() > 0
	due := applied-n.snapIndex.Load() >= n.cfg.SnapshotEntries || a.sinceSnap >= n.cfg.SnapshotBytes
	if !membership && (!due || a.sinceSnap < a.lastSnapBytes/4) {
		return nil
	}
	return n.snapshot(applied)
}

// snapshot encodes the state machine at applied and starts saving it.
func (n *Node) snapshot(applied uint64) error {
	a := &n.apply
	start := time.Now()
	state, err := n.sm.Snapshot()
	if err != nil {
		return fmt.Errorf("state machine snapshot: %w", err)
	}
	env := &peerv1.Snapshot{State: state, Members: a.members}
	conf := a.conf
	compact := uint64(0)
	if margin := a.margin(n.cfg.CompactionMargin, n.cfg.SnapshotBytes/2); applied > margin {
		compact = applied - margin
	}
	encoded := time.Since(start)
	a.sinceSnap, a.confChanged, a.saving = 0, false, true
	a.lastSnapBytes = uint64(len(state))
	go func() {
		size, err := n.saveSnapshot(applied, conf, env, compact)
		if err == nil {
			n.metrics.snapshots.Inc()
			n.metrics.snapshotBytes.Set(float64(size))
			n.metrics.snapshotTime.Observe(since(start))
			n.log.Info().Uint64("index", applied).Int("bytes", size).Dur("took", time.Since(start)).
				Dur("applier-paused", encoded).Msg("snapshot taken")
		}
		a.saved <- snapshotSaved{index: applied, err: err}
		select {
		case a.wake <- struct{}{}: // for the applier to learn of it
		default:
		}
	}()
	return nil
}

// saveSnapshot writes a snapshot of the state at index to the store and
// compacts the log up to compact (0: not at all). It returns the
// snapshot's size.
func (n *Node) saveSnapshot(index uint64, conf *raftpb.ConfState, env *peerv1.Snapshot, compact uint64) (int, error) {
	data, err := proto.Marshal(env)
	if err != nil {
		return 0, err
	}
	if _, err := n.store.CreateSnapshot(index, conf, data); err != nil {
		if errors.Is(err, raft.ErrSnapOutOfDate) {
			// A snapshot from the leader, newer than this one, was saved
			// meanwhile; it replaces this one.
			return len(data), nil
		}
		return 0, fmt.Errorf("saving snapshot: %w", err)
	}
	if compact == 0 {
		return len(data), nil
	}
	first, err := n.store.FirstIndex()
	if err != nil {
		return 0, err
	}
	if compact > first {
		// ErrCompacted: a snapshot from the leader, saved meanwhile,
		// discarded this part of the log already.
		if err := n.store.Compact(compact); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return 0, fmt.Errorf("compacting log: %w", err)
		}
	}
	return len(data), nil
}

// takeSaved takes the outcome of the snapshot being saved, if it is
// in: the snapshot index moves to it (unless one from the leader, restored
// meanwhile, is newer).
func (n *Node) takeSaved() error {
	a := &n.apply
	if !a.saving {
		return nil
	}
	select {
	case s := <-a.saved:
		a.saving = false
		if s.err != nil {
			return s.err
		}
		if s.index > n.snapIndex.Load() {
			n.snapIndex.Store(s.index)
		}
	default:
	}
	return nil
}
