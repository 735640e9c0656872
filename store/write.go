package store

import (
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// maxPointDeletes is how many stale tail entries Save removes with point
// deletes before switching to one range delete. Conflicting tails are short
// in practice and point deletes are cheaper for pebble to read past.
const maxPointDeletes = 16

// Save persists one raft Ready: it writes snap, ents and hs in one pebble
// batch committed with pebble.Sync, so when Save returns all three are
// durable, and after a crash either all or none of them are there.
//
// In order:
//   - a non-empty snap (index > 0) is installed: the whole log is discarded,
//     FirstIndex becomes snap's index+1, and snap's ConfState becomes the
//     one InitialState returns. raft.ErrSnapOutOfDate if it is not newer
//     than the current snapshot.
//   - ents (consecutive indexes) are appended; existing entries at or after
//     ents[0]'s index are replaced. Entries at or before the compacted index
//     are skipped, as MemoryStorage.Append does. ents must connect to the
//     log (no gap) and must leave the log reaching the snapshot index with
//     the snapshot's term there.
//   - a non-empty hs is written; its Commit must not pass the new last index.
//
// Any of the three may be nil or empty; if all are, Save writes nothing and
// does not sync. Save keeps references to ents (they serve later reads), so
// the caller must not modify them afterwards, which raft already requires.
// After a failed commit the store refuses further writes.
func (s *Store) Save(hs *pb.HardState, ents []*pb.Entry, snap *pb.Snapshot) error {
	return s.SaveReady(hs, ents, snap, true)
}

// SaveReady is Save with raft's Ready.MustSync: when mustSync is false (the
// Ready changes only the commit index, which raft can recompute after a
// crash) the batch is written without waiting for an fsync. The next synced
// write makes it durable along with itself.
func (s *Store) SaveReady(hs *pb.HardState, ents []*pb.Entry, snap *pb.Snapshot, mustSync bool) error {
	installSnap := snap != nil && !raft.IsEmptySnap(snap)
	writeHS := !raft.IsEmptyHardState(hs)
	if !installSnap && len(ents) == 0 && !writeHS {
		return nil
	}

	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.writable(); err != nil {
		return err
	}
	if err := checkContiguous(ents); err != nil {
		return err
	}

	// The state after this Save. Only this goroutine changes the fields it
	// is copied from (wmu), so reading them without mu is safe.
	var (
		trunc    = s.trunc
		last     = s.last
		meta     = s.snap
		commit   = s.hs.GetCommit()
		newSnap  *pb.SnapshotMetadata
		newHS    *pb.HardState
		cached   []cachedEntry
		rewrites bool // deletes or overwrites keys that readers of the current state may read
	)

	b := s.db.NewBatch()
	defer b.Close()

	if installSnap {
		idx := snap.GetMetadata().GetIndex()
		if cur := meta.GetIndex(); cur != 0 && cur >= idx {
			return raft.ErrSnapOutOfDate
		}
		snap = pb.EnsureSnapshot(proto.CloneOf(snap))
		data, err := proto.Marshal(snap)
		if err != nil {
			return fmt.Errorf("store: encode snapshot: %w", err)
		}
		if err := b.DeleteRange(logStart, logEnd, nil); err != nil {
			return fmt.Errorf("store: save: %w", err)
		}
		if err := b.Set(keySnapshot, data, nil); err != nil {
			return fmt.Errorf("store: save: %w", err)
		}
		trunc = truncState{index: idx, term: snap.GetMetadata().GetTerm()}
		if err := b.Set(keyTrunc, trunc.encode(), nil); err != nil {
			return fmt.Errorf("store: save: %w", err)
		}
		newSnap, meta, last, rewrites = snap.GetMetadata(), snap.GetMetadata(), idx, true
	}

	// Skip what is already compacted, as MemoryStorage.Append does.
	if len(ents) > 0 {
		first := trunc.index + 1
		if ents[len(ents)-1].GetIndex() < first {
			ents = nil
		} else if ents[0].GetIndex() < first {
			ents = ents[first-ents[0].GetIndex():]
		}
	}
	if len(ents) > 0 {
		start, end := ents[0].GetIndex(), ents[len(ents)-1].GetIndex()
		if start > last+1 {
			return fmt.Errorf("store: append at index %d leaves a gap after last index %d", start, last)
		}
		if snapIdx := meta.GetIndex(); start <= snapIdx {
			if end < snapIdx {
				return fmt.Errorf("store: append of [%d, %d] would cut the log before the snapshot index %d",
					start, end, snapIdx)
			}
			if t := ents[snapIdx-start].GetTerm(); t != meta.GetTerm() {
				return fmt.Errorf("store: append would replace entry %d (term %d) covered by the snapshot with term %d",
					snapIdx, meta.GetTerm(), t)
			}
		}
		if start <= last {
			rewrites = true
			if n := last - end; end < last && n <= maxPointDeletes {
				for i := end + 1; i <= last; i++ {
					if err := b.Delete(logKey(i), nil); err != nil {
						return fmt.Errorf("store: save: %w", err)
					}
				}
			} else if end < last {
				if err := b.DeleteRange(logKey(end+1), logEnd, nil); err != nil {
					return fmt.Errorf("store: save: %w", err)
				}
			}
		}
		cached = make([]cachedEntry, len(ents))
		key := make([]byte, 0, logKeyLen)
		for i, e := range ents {
			var err error
			s.scratch, err = proto.MarshalOptions{}.MarshalAppend(s.scratch[:0], e)
			if err != nil {
				return fmt.Errorf("store: encode entry %d: %w", e.GetIndex(), err)
			}
			key = appendLogKey(key[:0], e.GetIndex())
			if err := b.Set(key, s.scratch, nil); err != nil { // Set copies key and value
				return fmt.Errorf("store: save: %w", err)
			}
			cached[i] = cachedEntry{e: e, size: uint64(len(s.scratch))}
		}
		last = end
	}

	if writeHS {
		newHS = proto.CloneOf(hs)
		commit = newHS.GetCommit()
		data, err := proto.Marshal(newHS)
		if err != nil {
			return fmt.Errorf("store: encode hard state: %w", err)
		}
		if err := b.Set(keyHardState, data, nil); err != nil {
			return fmt.Errorf("store: save: %w", err)
		}
	}
	if commit > last {
		return fmt.Errorf("store: hard state commit index %d would pass the last index %d", commit, last)
	}

	publish := func() {
		if newSnap != nil {
			s.snap = newSnap
			s.cache.reset()
		}
		s.trunc, s.last = trunc, last
		s.cache.append(cached)
		if newHS != nil {
			s.hs = newHS
		}
	}
	return s.commit(b, rewrites, mustSync || installSnap || len(ents) > 0, publish)
}

// checkContiguous rejects ents whose indexes are not consecutive.
func checkContiguous(ents []*pb.Entry) error {
	for i := 1; i < len(ents); i++ {
		if ents[i].GetIndex() != ents[i-1].GetIndex()+1 {
			return fmt.Errorf("store: entries not consecutive: index %d follows %d",
				ents[i].GetIndex(), ents[i-1].GetIndex())
		}
	}
	return nil
}

// commit commits b (with pebble.Sync if sync) and then publishes the new
// in-memory state. If rewrites is set the batch deletes or overwrites log keys that
// readers of the current state may be reading, so mu is held across the
// commit; otherwise readers keep going during the fsync and only the
// publish excludes them. Called with wmu held.
func (s *Store) commit(b *pebble.Batch, rewrites, sync bool, publish func()) error {
	if rewrites {
		s.mu.Lock()
		defer s.mu.Unlock()
	}
	opts := pebble.Sync
	if !sync {
		opts = pebble.NoSync
	}
	if err := b.Commit(opts); err != nil {
		s.failed = err
		return fmt.Errorf("store: commit: %w", err)
	}
	if !rewrites {
		s.mu.Lock()
		defer s.mu.Unlock()
	}
	publish()
	return nil
}

// CreateSnapshot records a snapshot of the state machine taken at index,
// with its ConfState (nil keeps the previous snapshot's, as MemoryStorage
// does) and opaque data, synced before it returns. The term comes from the
// log. It returns raft.ErrSnapOutOfDate if index is not past the current
// snapshot's index, and an error if index is past LastIndex. The log is left
// alone: call Compact to discard the entries the snapshot covers. The
// returned snapshot's metadata is the caller's; its Data is data.
func (s *Store) CreateSnapshot(index uint64, cs *pb.ConfState, data []byte) (*pb.Snapshot, error) {
	// Encode outside the write lock: a large snapshot takes a while, and
	// raft's writes must not wait for it. Only the commit is ordered with
	// them, and the checks are made again under the lock.
	term, err := s.Term(index)
	if err != nil {
		if index > s.lastIndex() {
			return nil, fmt.Errorf("store: snapshot index %d is past the last index %d", index, s.lastIndex())
		}
		if index <= s.snapIndex() {
			return nil, raft.ErrSnapOutOfDate
		}
		return nil, fmt.Errorf("store: term of snapshot index %d: %w", index, err)
	}
	if cs == nil {
		s.mu.RLock()
		cs = s.snap.GetConfState()
		s.mu.RUnlock()
	}
	snap := pb.EnsureSnapshot(&pb.Snapshot{
		Data: data,
		Metadata: &pb.SnapshotMetadata{
			Index:     new(index),
			Term:      new(term),
			ConfState: proto.CloneOf(cs),
		},
	})
	// Encoded straight into the batch: a snapshot of a large table is tens
	// of MiB, and a copy of it is as much memory and time again.
	b := s.db.NewBatch()
	defer b.Close()
	size := proto.Size(snap)
	op := b.SetDeferred(len(keySnapshot), size)
	copy(op.Key, keySnapshot)
	enc, err := proto.MarshalOptions{}.MarshalAppend(op.Value[:0], snap)
	switch {
	case err != nil:
		return nil, fmt.Errorf("store: encode snapshot: %w", err)
	case len(enc) != size || (size > 0 && &enc[0] != &op.Value[0]):
		return nil, fmt.Errorf("store: snapshot encoded to %d bytes, not the %d it measured", len(enc), size)
	}
	if err := op.Finish(); err != nil {
		return nil, fmt.Errorf("store: create snapshot: %w", err)
	}

	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.writable(); err != nil {
		return nil, err
	}
	if index <= s.snap.GetIndex() {
		return nil, raft.ErrSnapOutOfDate
	}
	if index > s.last {
		return nil, fmt.Errorf("store: snapshot index %d is past the last index %d", index, s.last)
	}
	if t, err := s.Term(index); err != nil || t != term {
		// The log was truncated under the snapshot while it was encoded.
		return nil, fmt.Errorf("store: the entry at snapshot index %d changed (term %d, now %d, %v)", index, term, t, err)
	}
	// Snapshot() reads the key itself; only the metadata is published.
	if err := s.commit(b, false, true, func() { s.snap = snap.GetMetadata() }); err != nil {
		return nil, err
	}
	// The caller's own data, and metadata of its own: the published
	// metadata must not change under the store.
	return &pb.Snapshot{Data: data, Metadata: proto.CloneOf(snap.GetMetadata())}, nil
}

func (s *Store) lastIndex() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.last
}

func (s *Store) snapIndex() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.snap.GetIndex()
}

// Compact discards the log up to and including compactIndex, which then
// becomes the compacted index: FirstIndex becomes compactIndex+1 and
// Term(compactIndex) stays answerable, exactly as MemoryStorage.Compact. The
// entries go in one pebble range delete, synced before Compact returns.
//
// It returns raft.ErrCompacted if compactIndex is already compacted, and an
// error if compactIndex is past the snapshot index (the discarded entries
// would be covered by no snapshot, and lagging followers could never catch
// up) or past LastIndex.
func (s *Store) Compact(compactIndex uint64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.writable(); err != nil {
		return err
	}
	if compactIndex <= s.trunc.index {
		return raft.ErrCompacted
	}
	if compactIndex > s.last {
		return fmt.Errorf("store: compact index %d is past the last index %d", compactIndex, s.last)
	}
	if compactIndex > s.snap.GetIndex() {
		return fmt.Errorf("store: compact index %d is past the snapshot index %d", compactIndex, s.snap.GetIndex())
	}
	term, err := s.Term(compactIndex)
	if err != nil {
		return fmt.Errorf("store: term of compact index %d: %w", compactIndex, err)
	}
	trunc := truncState{index: compactIndex, term: term}
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(logKey(s.trunc.index+1), logKey(compactIndex+1), nil); err != nil {
		return fmt.Errorf("store: compact: %w", err)
	}
	if err := b.Set(keyTrunc, trunc.encode(), nil); err != nil {
		return fmt.Errorf("store: compact: %w", err)
	}
	return s.commit(b, true, true, func() {
		s.trunc = trunc
		s.cache.dropTo(compactIndex)
	})
}
