package store

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func TestEmptyStore(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs, "db", 0)
	for _, reopen := range []bool{false, true} {
		if reopen {
			mustClose(t, s)
			s = openStore(t, fs, "db", 0)
		}
		hs, cs, err := s.InitialState()
		if err != nil || hs == nil || cs == nil || !raft.IsEmptyHardState(hs) || len(cs.GetVoters()) != 0 {
			t.Fatalf("InitialState() = %v, %v, %v; want empty, empty, nil", hs, cs, err)
		}
		if first, _ := s.FirstIndex(); first != 1 {
			t.Errorf("FirstIndex() = %d, want 1", first)
		}
		if last, _ := s.LastIndex(); last != 0 {
			t.Errorf("LastIndex() = %d, want 0", last)
		}
		if term, err := s.Term(0); term != 0 || err != nil {
			t.Errorf("Term(0) = %d, %v; want 0, nil", term, err)
		}
		if _, err := s.Term(1); err != raft.ErrUnavailable {
			t.Errorf("Term(1) error = %v, want ErrUnavailable", err)
		}
		if _, err := s.Entries(1, 1, noLimit); err != raft.ErrUnavailable {
			t.Errorf("Entries(1, 1) error = %v, want ErrUnavailable", err)
		}
		if _, err := s.Entries(0, 1, noLimit); err != raft.ErrCompacted {
			t.Errorf("Entries(0, 1) error = %v, want ErrCompacted", err)
		}
		snap, err := s.Snapshot()
		if err != nil || !raft.IsEmptySnap(snap) || snap.GetMetadata().GetConfState() == nil {
			t.Errorf("Snapshot() = %v, %v; want an empty snapshot", snap, err)
		}
	}
}

// logStore returns a store holding entries 1..20 (term 1 through 10, term 2
// after), a snapshot at 10 and the log compacted through 5. cacheBytes
// decides how much of it Entries and Term find in memory; reopen reloads it.
func logStore(t *testing.T, cacheBytes int64, reopen bool) *Store {
	t.Helper()
	fs := vfs.NewMem()
	s := openStore(t, fs, "db", cacheBytes)
	if err := s.Save(hardState(2, 1, 15), append(ents(1, 11, 1), ents(11, 21, 2)...), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateSnapshot(10, confState(1, 2, 3), []byte("state at 10")); err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(5); err != nil {
		t.Fatal(err)
	}
	if reopen {
		mustClose(t, s)
		s = openStore(t, fs, "db", cacheBytes)
	}
	return s
}

// storeVariants runs f on logStore with the entries all cached, none cached
// and partly cached, each before and after a reopen.
func storeVariants(t *testing.T, f func(t *testing.T, s *Store)) {
	for _, cache := range []int64{0, 1, 100} {
		for _, reopen := range []bool{false, true} {
			t.Run(fmt.Sprintf("cache=%d,reopen=%v", cache, reopen), func(t *testing.T) {
				f(t, logStore(t, cache, reopen))
			})
		}
	}
}

func TestEntries(t *testing.T) {
	size := func(i uint64) uint64 {
		term := uint64(1)
		if i > 10 {
			term = 2
		}
		return uint64(proto.Size(ent(i, term, fmt.Sprintf("e%d.%d", i, term))))
	}
	tests := []struct {
		lo, hi, maxSize uint64
		want            []uint64 // indexes
		err             error
	}{
		{lo: 4, hi: 6, maxSize: noLimit, err: raft.ErrCompacted},
		{lo: 5, hi: 6, maxSize: noLimit, err: raft.ErrCompacted},
		{lo: 6, hi: 7, maxSize: noLimit, want: []uint64{6}},
		{lo: 6, hi: 6, maxSize: noLimit, want: nil},
		{lo: 6, hi: 21, maxSize: noLimit, want: []uint64{6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}},
		{lo: 19, hi: 21, maxSize: noLimit, want: []uint64{19, 20}},
		{lo: 6, hi: 22, maxSize: noLimit, err: raft.ErrUnavailable},
		{lo: 21, hi: 22, maxSize: noLimit, err: raft.ErrUnavailable},
		// maxSize: at least one entry, then as many as fit.
		{lo: 6, hi: 21, maxSize: 0, want: []uint64{6}},
		{lo: 6, hi: 21, maxSize: size(6) + size(7) - 1, want: []uint64{6}},
		{lo: 6, hi: 21, maxSize: size(6) + size(7), want: []uint64{6, 7}},
		{lo: 9, hi: 21, maxSize: size(9) + size(10) + size(11), want: []uint64{9, 10, 11}},
		{lo: 20, hi: 21, maxSize: 0, want: []uint64{20}},
	}
	storeVariants(t, func(t *testing.T, s *Store) {
		for _, tt := range tests {
			got, err := s.Entries(tt.lo, tt.hi, tt.maxSize)
			if !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Errorf("Entries(%d, %d, %d) error = %v, want %v", tt.lo, tt.hi, tt.maxSize, err, tt.err)
				continue
			}
			var idx []uint64
			for _, e := range got {
				idx = append(idx, e.GetIndex())
				term := uint64(1)
				if e.GetIndex() > 10 {
					term = 2
				}
				if want := ent(e.GetIndex(), term, fmt.Sprintf("e%d.%d", e.GetIndex(), term)); !proto.Equal(e, want) {
					t.Errorf("Entries(%d, %d, %d): got entry %v, want %v", tt.lo, tt.hi, tt.maxSize, e, want)
				}
			}
			if fmt.Sprint(idx) != fmt.Sprint(tt.want) {
				t.Errorf("Entries(%d, %d, %d) = %v, want %v", tt.lo, tt.hi, tt.maxSize, idx, tt.want)
			}
		}
	})
}

func TestTerm(t *testing.T) {
	tests := []struct {
		i, want uint64
		err     error
	}{
		{i: 0, err: raft.ErrCompacted},
		{i: 4, err: raft.ErrCompacted},
		{i: 5, want: 1}, // the compacted index keeps its term
		{i: 6, want: 1},
		{i: 10, want: 1}, // the snapshot index
		{i: 11, want: 2},
		{i: 20, want: 2},
		{i: 21, err: raft.ErrUnavailable},
	}
	storeVariants(t, func(t *testing.T, s *Store) {
		for _, tt := range tests {
			if got, err := s.Term(tt.i); got != tt.want || err != tt.err {
				t.Errorf("Term(%d) = %d, %v; want %d, %v", tt.i, got, err, tt.want, tt.err)
			}
		}
		if first, _ := s.FirstIndex(); first != 6 {
			t.Errorf("FirstIndex() = %d, want 6", first)
		}
		if last, _ := s.LastIndex(); last != 20 {
			t.Errorf("LastIndex() = %d, want 20", last)
		}
		hs, cs, _ := s.InitialState()
		if hs.GetTerm() != 2 || hs.GetVote() != 1 || hs.GetCommit() != 15 {
			t.Errorf("hard state = %v, want term 2 vote 1 commit 15", hs)
		}
		if fmt.Sprint(cs.GetVoters()) != "[1 2 3]" {
			t.Errorf("conf state = %v, want voters [1 2 3]", cs)
		}
		snap, err := s.Snapshot()
		if err != nil || snap.GetMetadata().GetIndex() != 10 || snap.GetMetadata().GetTerm() != 1 ||
			string(snap.GetData()) != "state at 10" {
			t.Errorf("Snapshot() = %v, %v; want index 10 term 1 with its data", snap, err)
		}
	})
}

func TestInstallSnapshot(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs, "db", 0)
	if err := s.Save(hardState(1, 1, 3), ents(1, 31, 1), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.SetMeta("name", []byte("n1")); err != nil {
		t.Fatal(err)
	}
	snap := snapshot(50, 7, confState(1, 2), "leader state")
	if err := s.Save(hardState(7, 2, 50), ents(51, 53, 7), snap); err != nil {
		t.Fatal(err)
	}
	for _, reopen := range []bool{false, true} {
		if reopen {
			mustClose(t, s)
			s = openStore(t, fs, "db", 0)
		}
		if first, _ := s.FirstIndex(); first != 51 {
			t.Errorf("FirstIndex() = %d, want 51", first)
		}
		if last, _ := s.LastIndex(); last != 52 {
			t.Errorf("LastIndex() = %d, want 52", last)
		}
		if term, err := s.Term(50); term != 7 || err != nil {
			t.Errorf("Term(50) = %d, %v; want 7, nil", term, err)
		}
		if _, err := s.Term(49); err != raft.ErrCompacted {
			t.Errorf("Term(49) error = %v, want ErrCompacted", err)
		}
		if _, err := s.Entries(50, 51, noLimit); err != raft.ErrCompacted {
			t.Errorf("Entries(50, 51) error = %v, want ErrCompacted", err)
		}
		_, cs, _ := s.InitialState()
		if fmt.Sprint(cs.GetVoters()) != "[1 2]" {
			t.Errorf("conf state = %v, want the snapshot's", cs)
		}
		got, err := s.Snapshot()
		if err != nil || !proto.Equal(got, pb.EnsureSnapshot(proto.CloneOf(snap))) {
			t.Errorf("Snapshot() = %v, %v; want %v", got, err, snap)
		}
		if v, err := s.GetMeta("name"); string(v) != "n1" || err != nil {
			t.Errorf("GetMeta(name) = %q, %v after the log was replaced", v, err)
		}
	}
	// Only a snapshot: the log is just its index.
	if err := s.Save(nil, nil, snapshot(60, 8, confState(3), "")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Entries(61, 61, noLimit); err != raft.ErrUnavailable {
		t.Errorf("Entries(61, 61) error = %v, want ErrUnavailable", err)
	}
	if last, _ := s.LastIndex(); last != 60 {
		t.Errorf("LastIndex() = %d, want 60", last)
	}
}

func TestConflictingAppend(t *testing.T) {
	for _, tail := range []uint64{3, 40} { // point deletes and a range delete
		t.Run(fmt.Sprintf("tail=%d", tail), func(t *testing.T) {
			fs := vfs.NewMem()
			s := openStore(t, fs, "db", 200)
			if err := s.Save(hardState(1, 1, 5), ents(1, 11+tail, 1), nil); err != nil {
				t.Fatal(err)
			}
			// A new leader replaces everything from 8 on with a shorter log.
			if err := s.Save(hardState(2, 2, 5), ents(8, 10, 2), nil); err != nil {
				t.Fatal(err)
			}
			for _, reopen := range []bool{false, true} {
				if reopen {
					mustClose(t, s)
					s = openStore(t, fs, "db", 200)
				}
				if last, _ := s.LastIndex(); last != 9 {
					t.Fatalf("LastIndex() = %d, want 9", last)
				}
				got, err := s.Entries(1, 10, noLimit)
				if err != nil {
					t.Fatal(err)
				}
				want := append(ents(1, 8, 1), ents(8, 10, 2)...)
				if !equalEntries(got, want) {
					t.Fatalf("Entries(1, 10) = %v, want %v", got, want)
				}
			}
		})
	}
}

// TestWriteErrors checks that writes raft never makes are refused with the
// right error, leave the state alone, and do not break the store.
func TestWriteErrors(t *testing.T) {
	tests := []struct {
		name  string
		write func(s *Store) error
		is    error // the raft sentinel, if any
		msg   string
	}{
		{"gap after the log", func(s *Store) error { return s.Save(nil, ents(22, 23, 2), nil) }, nil, "gap"},
		{"entries not consecutive", func(s *Store) error {
			return s.Save(nil, []*pb.Entry{ent(21, 2, ""), ent(23, 2, "")}, nil)
		}, nil, "not consecutive"},
		{"commit past the log", func(s *Store) error { return s.Save(hardState(2, 1, 21), nil, nil) }, nil, "commit"},
		{"truncation below the commit", func(s *Store) error { return s.Save(nil, ents(14, 15, 3), nil) }, nil, "commit"},
		{"append ending before the snapshot", func(s *Store) error { return s.Save(nil, ents(7, 9, 1), nil) }, nil, "before the snapshot"},
		{"append replacing the snapshot's entry", func(s *Store) error { return s.Save(nil, ents(9, 16, 3), nil) }, nil, "covered by the snapshot"},
		{"old snapshot", func(s *Store) error { return s.Save(nil, nil, snapshot(10, 1, nil, "")) }, raft.ErrSnapOutOfDate, ""},
		{"CreateSnapshot not newer", func(s *Store) error {
			_, err := s.CreateSnapshot(10, nil, nil)
			return err
		}, raft.ErrSnapOutOfDate, ""},
		{"CreateSnapshot past the log", func(s *Store) error {
			_, err := s.CreateSnapshot(21, nil, nil)
			return err
		}, nil, "past the last index"},
		{"Compact already compacted", func(s *Store) error { return s.Compact(5) }, raft.ErrCompacted, ""},
		{"Compact past the snapshot", func(s *Store) error { return s.Compact(11) }, nil, "past the snapshot index"},
		{"Compact past the log", func(s *Store) error { return s.Compact(21) }, nil, "past the last index"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := logStore(t, 0, false)
			before, err := capture(s)
			if err != nil {
				t.Fatal(err)
			}
			err = tt.write(s)
			switch {
			case err == nil:
				t.Fatal("write succeeded, want an error")
			case tt.is != nil && err != tt.is:
				t.Fatalf("error = %v, want %v", err, tt.is)
			case !strings.Contains(err.Error(), tt.msg):
				t.Fatalf("error = %v, want it to mention %q", err, tt.msg)
			}
			after, err := capture(s)
			if err != nil {
				t.Fatal(err)
			}
			if d := diff(after, before); d != "" {
				t.Fatalf("refused write changed the state: %s", d)
			}
			if err := s.Save(hardState(2, 1, 16), ents(21, 22, 2), nil); err != nil {
				t.Fatalf("store unusable after a refused write: %v", err)
			}
		})
	}
}

func TestEmptySaveWritesNothing(t *testing.T) {
	s := logStore(t, 0, false)
	walBytes := func() uint64 { return s.db.Metrics().WAL.BytesIn }
	before := walBytes()
	for _, save := range []func() error{
		func() error { return s.Save(nil, nil, nil) },
		func() error { return s.Save(&pb.HardState{}, []*pb.Entry{}, &pb.Snapshot{}) },
		func() error { return s.Save(hardState(0, 0, 0), nil, pb.EnsureSnapshot(nil)) },
	} {
		if err := save(); err != nil {
			t.Fatal(err)
		}
	}
	if after := walBytes(); after != before {
		t.Fatalf("empty saves wrote %d WAL bytes", after-before)
	}
	// Entries all below the compacted index are skipped too (MemoryStorage.Append).
	if err := s.Save(nil, ents(2, 5, 1), nil); err != nil {
		t.Fatal(err)
	}
}

func TestEntriesResultIsCallers(t *testing.T) {
	storeVariants(t, func(t *testing.T, s *Store) {
		for _, r := range [][2]uint64{{6, 21}, {6, 8}, {18, 20}} {
			a, err := s.Entries(r[0], r[1], noLimit)
			if err != nil {
				t.Fatal(err)
			}
			_ = append(a, ent(99, 9, "appended"))
			a[0] = ent(98, 9, "overwritten")
			b, err := s.Entries(r[0], r[1], noLimit)
			if err != nil {
				t.Fatal(err)
			}
			if b[0].GetIndex() != r[0] || len(b) != int(r[1]-r[0]) {
				t.Fatalf("changing a returned slice changed the store: %v", b)
			}
			if r[1] <= 20 {
				if next, _ := s.Entries(r[1], r[1]+1, noLimit); next[0].GetIndex() != r[1] {
					t.Fatalf("appending to a returned slice changed the store: %v", next)
				}
			}
		}
	})
}

func TestMeta(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs, "db", 0)
	if v, err := s.GetMeta("name"); v != nil || err != nil {
		t.Fatalf("GetMeta of a missing key = %q, %v; want nil, nil", v, err)
	}
	set := map[string][]byte{"name": []byte("n1"), "cluster": []byte("c-42"), "": []byte("empty key"), "nil": nil}
	for k, v := range set {
		if err := s.SetMeta(k, v); err != nil {
			t.Fatal(err)
		}
	}
	// Raft writes, including the range deletes, never reach meta keys.
	if err := s.Save(hardState(1, 1, 1), ents(1, 5, 1), snapshot(3, 1, confState(1), "x")); err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(3); err == nil || !errors.Is(err, raft.ErrCompacted) {
		t.Fatalf("Compact(3) = %v, want ErrCompacted", err)
	}
	mustClose(t, s)
	s = openStore(t, fs, "db", 0)
	for k, want := range set {
		got, err := s.GetMeta(k)
		if err != nil || !bytes.Equal(got, want) || got == nil {
			t.Errorf("GetMeta(%q) = %q, %v; want %q (non-nil)", k, got, err, want)
		}
	}
}

func TestClose(t *testing.T) {
	s := logStore(t, 0, false)
	if s.DiskUsage() == 0 {
		t.Error("DiskUsage() = 0 for an open store with data")
	}
	mustClose(t, s)
	if err := s.Close(); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
	if err := s.Save(nil, ents(21, 22, 2), nil); err == nil {
		t.Error("Save after Close succeeded")
	}
	if _, err := s.Entries(6, 7, noLimit); err == nil {
		t.Error("Entries after Close succeeded")
	}
	if _, err := s.Snapshot(); err == nil {
		t.Error("Snapshot after Close succeeded")
	}
	if err := s.SetMeta("k", nil); err == nil {
		t.Error("SetMeta after Close succeeded")
	}
	if _, err := s.GetMeta("k"); err == nil {
		t.Error("GetMeta after Close succeeded")
	}
	if got := s.DiskUsage(); got != 0 {
		t.Errorf("DiskUsage() after Close = %d, want 0", got)
	}
}

func TestOpenOnDisk(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Save(hardState(1, 1, 1), ents(1, 3, 1), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); err == nil {
		t.Fatal("a second Open of the same directory succeeded")
	}
	mustClose(t, s)
	s = openStore(t, nil, dir, 0)
	if last, _ := s.LastIndex(); last != 2 {
		t.Fatalf("LastIndex() after reopen = %d, want 2", last)
	}
	if _, err := Open(t.TempDir(), Options{CacheBytes: -1}); err == nil {
		t.Fatal("Open with negative CacheBytes succeeded")
	}
}

// TestOpenRejectsCorruption damages a store below the API and checks that
// Open names the problem instead of handing raft a broken log.
func TestOpenRejectsCorruption(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(db *pebble.DB) error
		msg     string
		corrupt bool
	}{
		{"gap in the log", func(db *pebble.DB) error { return db.Delete(logKey(12), nil) }, "gap", true},
		{"first entry missing", func(db *pebble.DB) error { return db.Delete(logKey(6), nil) }, "log starts at index 7", true},
		{"entry under the wrong key", func(db *pebble.DB) error {
			v, c, err := db.Get(logKey(7))
			if err != nil {
				return err
			}
			v = bytes.Clone(v)
			c.Close()
			return db.Set(logKey(8), v, nil)
		}, "stored under index 8", true},
		{"undecodable entry", func(db *pebble.DB) error { return db.Set(logKey(15), []byte{0xff, 0xff}, nil) }, "entry 15", true},
		{"log cut before the snapshot", func(db *pebble.DB) error {
			return db.DeleteRange(logKey(9), logEnd, nil)
		}, "before the snapshot index", true},
		{"compacted past the snapshot", func(db *pebble.DB) error {
			return db.Set(keyTrunc, truncState{index: 11, term: 2}.encode(), nil)
		}, "past the snapshot index", true},
		{"commit past the log", func(db *pebble.DB) error {
			b, _ := proto.Marshal(hardState(2, 1, 30))
			return db.Set(keyHardState, b, nil)
		}, "commit index 30", true},
		{"snapshot term disagrees with the log", func(db *pebble.DB) error {
			b, _ := proto.Marshal(snapshot(10, 9, confState(1), ""))
			return db.Set(keySnapshot, b, nil)
		}, "term", true},
		{"undecodable snapshot", func(db *pebble.DB) error { return db.Set(keySnapshot, []byte{0xff}, nil) }, "snapshot", true},
		{"no layout version", func(db *pebble.DB) error { return db.Delete(keyVersion, nil) }, "layout version", true},
		{"newer layout version", func(db *pebble.DB) error { return db.Set(keyVersion, []byte{2}, nil) }, "unsupported layout version", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := vfs.NewMem()
			s := openStore(t, fs, "db", 0)
			if err := s.Save(hardState(2, 1, 15), append(ents(1, 11, 1), ents(11, 21, 2)...), nil); err != nil {
				t.Fatal(err)
			}
			if _, err := s.CreateSnapshot(10, confState(1), nil); err != nil {
				t.Fatal(err)
			}
			if err := s.Compact(5); err != nil {
				t.Fatal(err)
			}
			mustClose(t, s)

			db, err := pebble.Open("db", &pebble.Options{FS: fs, Logger: pebbleLogger{zerolog.Nop()}})
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.damage(db); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}

			s, err = Open("db", Options{FS: fs})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded on a damaged store")
			}
			if errors.Is(err, ErrCorrupt) != tt.corrupt || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Open error = %v; want one mentioning %q (ErrCorrupt: %v)", err, tt.msg, tt.corrupt)
			}
		})
	}
}

// TestConcurrentReadsDuringWrites runs raft-style readers against a writer
// that appends, replaces tails, snapshots and compacts. Readers may see an
// older or newer state, but every answer must be a consistent one: entries
// contiguous from lo, each the one written for its index and term.
func TestConcurrentReadsDuringWrites(t *testing.T) {
	s := openStore(t, vfs.NewMem(), "db", 300) // most reads go to pebble, where a torn read would show
	entry := func(i, term uint64) *pb.Entry { return ent(i, term, fmt.Sprintf("%d/%d", i, term)) }

	stop := make(chan struct{})
	errc := make(chan error, 2)
	var reads atomic.Int64
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 1))
			for {
				select {
				case <-stop:
					errc <- nil
					return
				default:
				}
				first, _ := s.FirstIndex()
				last, _ := s.LastIndex()
				if last < first {
					continue
				}
				lo := first + uint64(rng.IntN(int(last-first+1)))
				hi := lo + uint64(rng.IntN(int(last-lo+2)))
				es, err := s.Entries(lo, hi, uint64(rng.IntN(3000)))
				reads.Add(1)
				if errors.Is(err, raft.ErrCompacted) || errors.Is(err, raft.ErrUnavailable) {
					continue // the log moved on since FirstIndex/LastIndex
				}
				if err != nil {
					errc <- err
					return
				}
				prevTerm := uint64(0)
				for k, e := range es {
					if e.GetIndex() != lo+uint64(k) || string(e.GetData()) != fmt.Sprintf("%d/%d", e.GetIndex(), e.GetTerm()) ||
						e.GetTerm() < prevTerm {
						errc <- fmt.Errorf("Entries(%d, %d) returned %v at position %d", lo, hi, e, k)
						return
					}
					prevTerm = e.GetTerm()
				}
				if _, err := s.Term(lo); err != nil && !errors.Is(err, raft.ErrCompacted) && !errors.Is(err, raft.ErrUnavailable) {
					errc <- err
					return
				}
			}
		}()
	}

	rng := rand.New(rand.NewPCG(9, 9))
	term, commit := uint64(1), uint64(0)
	writes := 400
	if raceEnabled {
		writes = 150
	}
	for range writes {
		last, _ := s.LastIndex()
		first, _ := s.FirstIndex()
		snap, _ := s.Snapshot()
		switch r := rng.IntN(10); {
		case r < 6 || last < first+5:
			var es []*pb.Entry
			start := last + 1
			if rng.IntN(4) == 0 && last > commit+1 {
				start = commit + 1 + uint64(rng.IntN(int(last-commit))) // replace an uncommitted tail
				term++
			}
			for i := start; i < start+1+uint64(rng.IntN(10)); i++ {
				es = append(es, entry(i, term))
			}
			commit = max(commit, start-1)
			if err := s.Save(hardState(term, 1, commit), es, nil); err != nil {
				t.Fatal(err)
			}
		case r < 8:
			if commit > snap.GetMetadata().GetIndex() {
				if _, err := s.CreateSnapshot(commit, confState(1), nil); err != nil {
					t.Fatal(err)
				}
			}
		default:
			if si := snap.GetMetadata().GetIndex(); si >= first {
				if err := s.Compact(si); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	close(stop)
	wg.Wait()
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d writes, %d concurrent Entries calls", writes, reads.Load())
}

func TestPebbleLogger(t *testing.T) {
	var buf bytes.Buffer
	l := pebbleLogger{zerolog.New(&buf)}
	l.Infof("flushed %d", 7)
	l.Errorf("bad %s", "thing")
	func() {
		defer func() {
			if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "broken invariant") {
				t.Errorf("Fatalf panicked with %v, want the message", r)
			}
		}()
		l.Fatalf("broken %s", "invariant")
	}()
	for _, want := range []string{`"level":"info","message":"flushed 7"`, `"level":"error","message":"bad thing"`,
		`"level":"fatal","message":"broken invariant"`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log %q lacks %s", buf.String(), want)
		}
	}

	// A store opened with a logger runs with it; one without logs nothing.
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: zerolog.New(&buf)})
	if err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)
}

// TestSnapshotPastSavedCommit reopens a store whose snapshot (and
// compaction) got ahead of the commit index in its hard state, as a crash
// leaves it when a snapshot is written before the hard state that covers
// it. raft refuses to start with a snapshot past the commit index; the
// store reports the snapshot's index as committed.
func TestSnapshotPastSavedCommit(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, nil, dir, 0)
	if err := s.Save(hardState(2, 1, 3), ents(1, 11, 2), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateSnapshot(8, confState(1), []byte("state")); err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(6); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)

	s = openStore(t, nil, dir, 0)
	hs, _, err := s.InitialState()
	if err != nil {
		t.Fatal(err)
	}
	if hs.GetCommit() != 8 || hs.GetTerm() != 2 || hs.GetVote() != 1 {
		t.Fatalf("hard state after reopen = %v, want term 2, vote 1, commit 8", hs)
	}
	rn, err := raft.NewRawNode(&raft.Config{ID: 1, ElectionTick: 10, HeartbeatTick: 1, Storage: s, Applied: 8,
		MaxSizePerMsg: 1 << 20, MaxInflightMsgs: 16})
	if err != nil {
		t.Fatalf("raft refuses the reopened store: %v", err)
	}
	if st := rn.Status(); st.GetCommit() != 8 {
		t.Fatalf("raft's commit index = %d, want 8", st.GetCommit())
	}
}
