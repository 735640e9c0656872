package store

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// InitialState implements raft.Storage. It returns the last saved HardState
// (empty, not nil, if none was ever saved) and the ConfState of the latest
// snapshot (empty if there is none). Both are copies the caller owns.
func (s *Store) InitialState() (*pb.HardState, *pb.ConfState, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	hs := new(pb.HardState)
	if s.hs != nil {
		hs = proto.CloneOf(s.hs)
	}
	return hs, proto.CloneOf(s.snap.GetConfState()), nil
}

// Entries implements raft.Storage: the entries in [lo, hi), at least one if
// the range is not empty, then more while their total encoded size stays
// within maxSize. It returns raft.ErrCompacted if lo <= the compacted index,
// and an error wrapping raft.ErrUnavailable if hi > LastIndex()+1 or the log
// is empty. The returned slice is freshly allocated (the caller may append to
// it); the entries themselves are shared and must not be modified.
func (s *Store) Entries(lo, hi, maxSize uint64) ([]*pb.Entry, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errClosed
	}
	if lo <= s.trunc.index {
		return nil, raft.ErrCompacted
	}
	if hi > s.last+1 {
		return nil, fmt.Errorf("store: entries [%d, %d) beyond last index %d: %w", lo, hi, s.last, raft.ErrUnavailable)
	}
	if s.last == s.trunc.index {
		return nil, raft.ErrUnavailable // like MemoryStorage: nothing but the compacted marker
	}
	if lo > hi {
		return nil, fmt.Errorf("store: invalid entries range [%d, %d)", lo, hi)
	}

	out := make([]*pb.Entry, 0, min(hi-lo, 256))
	var size uint64
	cacheFirst := s.cache.first()
	if len(s.cache.ents) == 0 {
		cacheFirst = s.last + 1
	}
	if lo < cacheFirst {
		var full bool
		var err error
		out, size, full, err = s.loadEntries(out, lo, min(hi, cacheFirst), maxSize)
		if err != nil || full {
			return out, err
		}
		lo = cacheFirst
	}
	for i := lo; i < hi; i++ {
		ce, _ := s.cache.get(i)
		size += ce.size
		if len(out) > 0 && size > maxSize {
			break
		}
		out = append(out, ce.e)
	}
	return out, nil
}

// loadEntries appends entries [lo, hi) read from pebble to out, stopping
// once the size limit is reached (full reports that). Called with mu held.
func (s *Store) loadEntries(out []*pb.Entry, lo, hi, maxSize uint64) (_ []*pb.Entry, size uint64, full bool, _ error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: logKey(lo), UpperBound: logKey(hi)})
	if err != nil {
		return nil, 0, false, fmt.Errorf("store: read entries: %w", err)
	}
	next := lo
	for valid := it.First(); valid; valid = it.Next() {
		idx, err := decodeLogKey(it.Key())
		if err == nil && idx != next {
			err = fmt.Errorf("%w: entry %d missing from the log", ErrCorrupt, next)
		}
		var v []byte
		if err == nil {
			v, err = it.ValueAndErr()
		}
		size += uint64(len(v))
		if err == nil && len(out) > 0 && size > maxSize {
			full = true
			break
		}
		e := new(pb.Entry)
		if err == nil {
			if uerr := proto.Unmarshal(v, e); uerr != nil {
				err = fmt.Errorf("%w: entry %d: %v", ErrCorrupt, idx, uerr)
			} else if e.GetIndex() != idx {
				err = fmt.Errorf("%w: entry with index %d stored under index %d", ErrCorrupt, e.GetIndex(), idx)
			}
		}
		if err != nil {
			_ = it.Close()
			return nil, 0, false, err
		}
		out = append(out, e)
		next++
	}
	if err := it.Close(); err != nil {
		return nil, 0, false, fmt.Errorf("store: read entries: %w", err)
	}
	if !full && next != hi {
		return nil, 0, false, fmt.Errorf("%w: entry %d missing from the log", ErrCorrupt, next)
	}
	return out, size, full, nil
}

// Term implements raft.Storage. The term of the compacted index
// (FirstIndex()-1) stays answerable; lower indexes give raft.ErrCompacted and
// indexes past LastIndex() give raft.ErrUnavailable.
func (s *Store) Term(i uint64) (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch {
	case i < s.trunc.index:
		return 0, raft.ErrCompacted
	case i == s.trunc.index:
		return s.trunc.term, nil
	case i > s.last:
		return 0, raft.ErrUnavailable
	}
	if ce, ok := s.cache.get(i); ok {
		return ce.e.GetTerm(), nil
	}
	if s.closed {
		return 0, errClosed
	}
	v, closer, err := s.db.Get(logKey(i))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, fmt.Errorf("%w: entry %d missing from the log", ErrCorrupt, i)
	}
	if err != nil {
		return 0, fmt.Errorf("store: read term of entry %d: %w", i, err)
	}
	defer closer.Close()
	idx, term, err := entryIndexTerm(v)
	if err != nil {
		return 0, fmt.Errorf("entry %d: %w", i, err)
	}
	if idx != i {
		return 0, fmt.Errorf("%w: entry with index %d stored under index %d", ErrCorrupt, idx, i)
	}
	return term, nil
}

// LastIndex implements raft.Storage.
func (s *Store) LastIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.last, nil
}

// FirstIndex implements raft.Storage: one past the last compacted index.
func (s *Store) FirstIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.trunc.index + 1, nil
}

// Snapshot implements raft.Storage. It returns the latest snapshot, made by
// CreateSnapshot or installed by Save, with its data, read from disk; an
// empty snapshot if there is none. The caller owns the result.
func (s *Store) Snapshot() (*pb.Snapshot, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errClosed
	}
	if s.snap.GetIndex() == 0 {
		return pb.EnsureSnapshot(nil), nil
	}
	// A concurrent CreateSnapshot may already have committed a newer one;
	// returning it is fine, it is just as durable.
	v, closer, err := s.db.Get(keySnapshot)
	if err != nil {
		return nil, fmt.Errorf("store: read snapshot: %w", err)
	}
	defer closer.Close()
	snap := new(pb.Snapshot)
	if err := proto.Unmarshal(v, snap); err != nil {
		return nil, fmt.Errorf("%w: snapshot: %v", ErrCorrupt, err)
	}
	return pb.EnsureSnapshot(snap), nil
}
