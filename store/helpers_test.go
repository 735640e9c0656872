package store

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

const noLimit = math.MaxUint64

// openStore opens a store in dir on fs and closes it at the end of the test
// (a second Close from the test itself is harmless).
func openStore(t testing.TB, fs vfs.FS, dir string, cacheBytes int64) *Store {
	t.Helper()
	s, err := Open(dir, Options{FS: fs, CacheBytes: cacheBytes})
	if err != nil {
		t.Fatalf("Open(%q): %v", dir, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustClose(t testing.TB, s *Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func ent(index, term uint64, data string) *pb.Entry {
	e := &pb.Entry{Index: new(index), Term: new(term), Type: pb.EntryType_EntryNormal.Enum()}
	if data != "" {
		e.Data = []byte(data)
	}
	return e
}

// ents returns entries [lo, hi) with the given term.
func ents(lo, hi, term uint64) []*pb.Entry {
	var out []*pb.Entry
	for i := lo; i < hi; i++ {
		out = append(out, ent(i, term, fmt.Sprintf("e%d.%d", i, term)))
	}
	return out
}

func hardState(term, vote, commit uint64) *pb.HardState {
	return &pb.HardState{Term: new(term), Vote: new(vote), Commit: new(commit)}
}

func confState(voters ...uint64) *pb.ConfState {
	return &pb.ConfState{Voters: voters}
}

func snapshot(index, term uint64, cs *pb.ConfState, data string) *pb.Snapshot {
	return &pb.Snapshot{
		Data:     []byte(data),
		Metadata: &pb.SnapshotMetadata{Index: new(index), Term: new(term), ConfState: cs},
	}
}

// state is everything raft.Storage answers for valid arguments, read out
// through the interface, so a store and a MemoryStorage can be compared.
type state struct {
	hs          *pb.HardState
	cs          *pb.ConfState
	first, last uint64
	terms       []uint64    // terms[i] is Term(first-1+i), through last
	entries     []*pb.Entry // [first, last]
	snap        *pb.Snapshot
}

func capture(s raft.Storage) (state, error) {
	var st state
	var err error
	if st.hs, st.cs, err = s.InitialState(); err != nil {
		return st, fmt.Errorf("InitialState: %w", err)
	}
	if st.first, err = s.FirstIndex(); err != nil {
		return st, err
	}
	if st.last, err = s.LastIndex(); err != nil {
		return st, err
	}
	for i := st.first - 1; i <= st.last; i++ {
		term, err := s.Term(i)
		if err != nil {
			return st, fmt.Errorf("Term(%d): %w", i, err)
		}
		st.terms = append(st.terms, term)
	}
	if st.last >= st.first {
		if st.entries, err = s.Entries(st.first, st.last+1, noLimit); err != nil {
			return st, fmt.Errorf("Entries(%d, %d): %w", st.first, st.last+1, err)
		}
	}
	if st.snap, err = s.Snapshot(); err != nil {
		return st, fmt.Errorf("Snapshot: %w", err)
	}
	return st, nil
}

// diff describes how got differs from want, or returns "" if they agree.
func diff(got, want state) string {
	switch {
	case got.hs.GetTerm() != want.hs.GetTerm() || got.hs.GetVote() != want.hs.GetVote() ||
		got.hs.GetCommit() != want.hs.GetCommit():
		return fmt.Sprintf("hard state %v, want %v", got.hs, want.hs)
	case !proto.Equal(pb.EnsureConfState(got.cs), pb.EnsureConfState(want.cs)):
		return fmt.Sprintf("conf state %v, want %v", got.cs, want.cs)
	case got.first != want.first || got.last != want.last:
		return fmt.Sprintf("log [%d, %d], want [%d, %d]", got.first, got.last, want.first, want.last)
	case !equalUint64s(got.terms, want.terms):
		return fmt.Sprintf("terms from %d: %v, want %v", got.first-1, got.terms, want.terms)
	case !equalEntries(got.entries, want.entries):
		return fmt.Sprintf("entries %v, want %v", got.entries, want.entries)
	case !proto.Equal(pb.EnsureSnapshot(got.snap), pb.EnsureSnapshot(want.snap)):
		return fmt.Sprintf("snapshot %v, want %v", got.snap.GetMetadata(), want.snap.GetMetadata())
	}
	return ""
}

func equalUint64s(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func equalEntries(a, b []*pb.Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// sameErr reports whether two raft.Storage errors mean the same thing.
func sameErr(a, b error) bool {
	for _, sentinel := range []error{raft.ErrCompacted, raft.ErrUnavailable, raft.ErrSnapOutOfDate} {
		if errors.Is(a, sentinel) || errors.Is(b, sentinel) {
			return errors.Is(a, sentinel) && errors.Is(b, sentinel)
		}
	}
	return (a == nil) == (b == nil)
}

// checkAgainst compares every raft.Storage answer of s with the model's:
// the whole state, Term around the edges, and random Entries calls with
// random size limits.
func checkAgainst(t testing.TB, rng *rand.Rand, s *Store, model *raft.MemoryStorage, what string) {
	t.Helper()
	want, err := capture(model)
	if err != nil {
		t.Fatalf("%s: model: %v", what, err)
	}
	got, err := capture(s)
	if err != nil {
		t.Fatalf("%s: store: %v", what, err)
	}
	if d := diff(got, want); d != "" {
		t.Fatalf("%s: %s", what, d)
	}
	for i := uint64(0); i <= want.last+2; i++ {
		if i+3 < want.first && i > 2 {
			continue // deep in the compacted range: all alike
		}
		gt, gerr := s.Term(i)
		mt, merr := model.Term(i)
		if gt != mt || !sameErr(gerr, merr) {
			t.Fatalf("%s: Term(%d) = %d, %v; model %d, %v", what, i, gt, gerr, mt, merr)
		}
	}
	for range 8 {
		lo := want.first - min(want.first, uint64(rng.IntN(3)))
		lo += uint64(rng.IntN(int(want.last - lo + 2)))
		hi := lo + uint64(rng.IntN(int(want.last+2-lo)))
		var maxSize uint64
		switch rng.IntN(4) {
		case 0:
			maxSize = 0
		case 1:
			maxSize = noLimit
		default:
			maxSize = uint64(rng.IntN(2000))
		}
		gents, gerr := s.Entries(lo, hi, maxSize)
		ments, merr := model.Entries(lo, hi, maxSize)
		if !sameErr(gerr, merr) || !equalEntries(gents, ments) {
			t.Fatalf("%s: Entries(%d, %d, %d) = %d entries, %v; model %d entries, %v",
				what, lo, hi, maxSize, len(gents), gerr, len(ments), merr)
		}
	}
}

// reopened is st as a store holding it reports it after a reopen (see load).
func reopened(st state) state {
	st.hs = committedThroughSnapshot(st.hs, st.snap.GetMetadata().GetIndex())
	return st
}
