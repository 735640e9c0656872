package store

import (
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// load rebuilds the in-memory state from disk and checks every invariant the
// writers maintain, so that damage is reported here, with a clear error,
// rather than as a raft panic later.
func (s *Store) load() error {
	if err := s.checkVersion(); err != nil {
		return err
	}

	hsb, err := s.get(keyHardState)
	if err != nil {
		return fmt.Errorf("store: read hard state: %w", err)
	}
	if hsb != nil {
		hs := new(pb.HardState)
		if err := proto.Unmarshal(hsb, hs); err != nil {
			return fmt.Errorf("%w: hard state: %v", ErrCorrupt, err)
		}
		s.hs = hs
	}

	snapb, err := s.get(keySnapshot)
	if err != nil {
		return fmt.Errorf("store: read snapshot: %w", err)
	}
	snap := new(pb.Snapshot)
	if snapb != nil {
		if err := proto.Unmarshal(snapb, snap); err != nil {
			return fmt.Errorf("%w: snapshot: %v", ErrCorrupt, err)
		}
		if snap.GetMetadata().GetIndex() == 0 {
			return fmt.Errorf("%w: stored snapshot has index 0", ErrCorrupt)
		}
	}
	s.snap = pb.EnsureSnapshotMetadata(snap.GetMetadata())

	tb, err := s.get(keyTrunc)
	if err != nil {
		return fmt.Errorf("store: read truncated state: %w", err)
	}
	if tb != nil {
		if s.trunc, err = decodeTrunc(tb); err != nil {
			return err
		}
	}

	snapIndex, snapTerm := s.snap.GetIndex(), s.snap.GetTerm()
	if s.trunc.index > snapIndex {
		return fmt.Errorf("%w: log compacted through index %d, past the snapshot index %d",
			ErrCorrupt, s.trunc.index, snapIndex)
	}
	if s.trunc.index == snapIndex && s.trunc.term != snapTerm {
		return fmt.Errorf("%w: term %d of compacted index %d differs from snapshot term %d",
			ErrCorrupt, s.trunc.term, s.trunc.index, snapTerm)
	}

	// Walk the whole log: it must run without gaps from right after the
	// compacted index, with every entry under its own index. Only the
	// index and term are decoded.
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: logStart, UpperBound: logEnd})
	if err != nil {
		return fmt.Errorf("store: scan log: %w", err)
	}
	next := s.trunc.index + 1
	for valid := it.First(); valid; valid = it.Next() {
		idx, err := decodeLogKey(it.Key())
		if err != nil {
			_ = it.Close()
			return err
		}
		if idx != next {
			_ = it.Close()
			if next == s.trunc.index+1 {
				return fmt.Errorf("%w: log starts at index %d, want %d (right after the compacted index)",
					ErrCorrupt, idx, next)
			}
			return fmt.Errorf("%w: log has a gap: entry %d missing before entry %d", ErrCorrupt, next, idx)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("store: scan log at index %d: %w", idx, err)
		}
		eIdx, eTerm, err := entryIndexTerm(v)
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("entry %d: %w", idx, err)
		}
		if eIdx != idx {
			_ = it.Close()
			return fmt.Errorf("%w: entry with index %d stored under index %d", ErrCorrupt, eIdx, idx)
		}
		if idx == snapIndex && eTerm != snapTerm {
			_ = it.Close()
			return fmt.Errorf("%w: entry %d has term %d, snapshot at that index has term %d",
				ErrCorrupt, idx, eTerm, snapTerm)
		}
		next++
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("store: scan log: %w", err)
	}
	s.last = next - 1

	if s.last < snapIndex {
		return fmt.Errorf("%w: log ends at index %d, before the snapshot index %d", ErrCorrupt, s.last, snapIndex)
	}
	// A snapshot holds only committed entries, but it is written apart from
	// raft's hard state: a writer that snapshots before the hard state
	// covering it is on disk (the node does not, but its applier and raft
	// loop write concurrently) would leave, after a crash, a commit index
	// below the snapshot's, which raft refuses at start. Everything up to
	// the snapshot is committed, so that is the commit index at least.
	s.hs = committedThroughSnapshot(s.hs, snapIndex)
	if c := s.hs.GetCommit(); c > s.last {
		return fmt.Errorf("%w: hard state commit index %d is past the last log index %d", ErrCorrupt, c, s.last)
	}
	return s.fillCache()
}

// checkVersion writes the layout version into a new store and refuses a store
// written with a layout this code does not know.
func (s *Store) checkVersion() error {
	v, err := s.get(keyVersion)
	if err != nil {
		return fmt.Errorf("store: read layout version: %w", err)
	}
	if v != nil {
		if len(v) != 1 || v[0] != layoutVersion {
			return fmt.Errorf("store: unsupported layout version %x (this build reads %d)", v, layoutVersion)
		}
		return nil
	}
	it, err := s.db.NewIter(nil)
	if err != nil {
		return fmt.Errorf("store: read layout version: %w", err)
	}
	empty := !it.First()
	if err := it.Close(); err != nil {
		return fmt.Errorf("store: read layout version: %w", err)
	}
	if !empty {
		return fmt.Errorf("%w: data present but no layout version key", ErrCorrupt)
	}
	if err := s.db.Set(keyVersion, []byte{layoutVersion}, pebble.Sync); err != nil {
		return fmt.Errorf("store: write layout version: %w", err)
	}
	return nil
}

// fillCache loads the newest entries, as many as fit the cache budget.
func (s *Store) fillCache() error {
	if s.last == s.trunc.index {
		return nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: logKey(s.trunc.index + 1), UpperBound: logEnd})
	if err != nil {
		return fmt.Errorf("store: load entry cache: %w", err)
	}
	var ents []cachedEntry
	var bytes uint64
	for valid := it.Last(); valid; valid = it.Prev() {
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("store: load entry cache: %w", err)
		}
		if bytes+uint64(len(v)) > s.cache.limit {
			break
		}
		e := new(pb.Entry)
		if err := proto.Unmarshal(v, e); err != nil {
			_ = it.Close()
			return fmt.Errorf("%w: entry under key %x: %v", ErrCorrupt, it.Key(), err)
		}
		ents = append(ents, cachedEntry{e: e, size: uint64(len(v))})
		bytes += uint64(len(v))
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("store: load entry cache: %w", err)
	}
	slices.Reverse(ents)
	s.cache.append(ents)
	return nil
}

// committedThroughSnapshot returns hs with its commit index raised to
// snapIndex if it is below it (hs itself is not modified).
func committedThroughSnapshot(hs *pb.HardState, snapIndex uint64) *pb.HardState {
	if snapIndex <= hs.GetCommit() {
		return hs
	}
	return &pb.HardState{Term: new(hs.GetTerm()), Vote: new(hs.GetVote()), Commit: new(snapIndex)}
}
