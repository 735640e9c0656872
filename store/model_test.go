package store

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// gen produces random raft.Storage writes that respect what raft itself
// guarantees (committed entries and entries covered by the snapshot are
// never replaced, snapshots received are newer than the commit index, the
// commit index never passes the log), and applies each to both a Store and a
// raft.MemoryStorage model.
type gen struct {
	rng   *rand.Rand
	model *raft.MemoryStorage
	term  uint64 // highest term used so far
}

func newGen(seed uint64) *gen {
	return &gen{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), model: raft.NewMemoryStorage(), term: 1}
}

func (g *gen) bounds() (first, last, snapIndex, commit uint64) {
	first, _ = g.model.FirstIndex()
	last, _ = g.model.LastIndex()
	snap, _ := g.model.Snapshot()
	hs, _, _ := g.model.InitialState()
	return first, last, snap.GetMetadata().GetIndex(), hs.GetCommit()
}

func (g *gen) data() []byte {
	var n int
	switch r := g.rng.IntN(100); {
	case r < 10:
		return nil
	case r < 75:
		n = g.rng.IntN(64)
	case r < 97:
		n = 64 + g.rng.IntN(448)
	default:
		n = 2048 + g.rng.IntN(6144)
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(g.rng.Uint32())
	}
	return b
}

func (g *gen) confState() *pb.ConfState {
	cs := &pb.ConfState{}
	for id := uint64(1); id <= 5; id++ {
		switch g.rng.IntN(3) {
		case 0:
			cs.Voters = append(cs.Voters, id)
		case 1:
			cs.Learners = append(cs.Learners, id)
		}
	}
	if g.rng.IntN(4) == 0 {
		cs.VotersOutgoing = []uint64{1, 2}
		cs.AutoLeave = new(g.rng.IntN(2) == 0)
	}
	return cs
}

// entries returns count entries from index start on. Up to index keep they
// copy the model's terms (raft only ever re-sends those unchanged); after it
// they may start a new term.
func (g *gen) entries(start, count, keep uint64) []*pb.Entry {
	first, last, _, _ := g.bounds()
	out := make([]*pb.Entry, 0, count)
	diverged := false
	for i := start; i < start+count; i++ {
		term := g.term
		if i <= keep && i <= last && i+1 >= first {
			term, _ = g.model.Term(i)
		} else if !diverged && g.rng.IntN(4) == 0 {
			g.term++
			term, diverged = g.term, true
		}
		e := &pb.Entry{Index: new(i), Term: new(term), Data: g.data()}
		if g.rng.IntN(10) == 0 {
			e.Type = pb.EntryType_EntryConfChangeV2.Enum()
		}
		out = append(out, e)
	}
	return out
}

func (g *gen) hardState(commitLo, commitHi uint64) *pb.HardState {
	hs, _, _ := g.model.InitialState()
	if g.rng.IntN(3) == 0 {
		g.term++
	}
	commit := commitLo
	if commitHi > commitLo {
		commit += uint64(g.rng.IntN(int(commitHi - commitLo + 1)))
	}
	return &pb.HardState{
		Term:   new(max(g.term, hs.GetTerm())),
		Vote:   new(uint64(g.rng.IntN(4))),
		Commit: new(commit),
	}
}

// write is one generated write, ready to apply to a store and to the model.
type write struct {
	desc  string
	store func(*Store) (*pb.Snapshot, error) // the snapshot is CreateSnapshot's
	model func() (*pb.Snapshot, error)
}

// step performs one random write on s and the model and describes it.
func (g *gen) step(t testing.TB, s *Store) string {
	t.Helper()
	w := g.next()
	got, err := w.store(s)
	if err != nil {
		t.Fatalf("%s: %v", w.desc, err)
	}
	want, err := w.model()
	if err != nil {
		t.Fatalf("%s: model: %v", w.desc, err)
	}
	if !proto.Equal(pb.EnsureSnapshot(got), pb.EnsureSnapshot(want)) {
		t.Fatalf("%s = %v, model %v", w.desc, got.GetMetadata(), want.GetMetadata())
	}
	return w.desc
}

// next generates a random write from the model's current state.
func (g *gen) next() write {
	first, last, snapIndex, commit := g.bounds()
	switch r := g.rng.IntN(100); {
	case r < 70: // append, possibly replacing a tail, possibly with a hard state
		lo := max(1, first-min(first, 3))
		start := last + 1
		if g.rng.IntN(3) == 0 {
			start = lo + uint64(g.rng.IntN(int(last+2-lo)))
		}
		count := 1 + uint64(g.rng.IntN(16))
		keep := max(snapIndex, commit)
		if end := start + count - 1; end >= first && end < keep {
			count = keep - start + 1 + uint64(g.rng.IntN(3))
		}
		es := g.entries(start, count, keep)
		newLast := last
		if end := start + count - 1; end >= first {
			newLast = end
		}
		var hs *pb.HardState
		if g.rng.IntN(2) == 0 {
			hs = g.hardState(commit, min(newLast, commit+8))
		}
		return g.save(fmt.Sprintf("append [%d, %d] hs=%v", start, start+count-1, hs), hs, es, nil)
	case r < 78: // hard state only
		hs := g.hardState(commit, min(last, commit+8))
		return g.save(fmt.Sprintf("hard state %v", hs), hs, nil, nil)
	case r < 86: // snapshot of the state machine, up to the commit index
		if commit <= snapIndex {
			return g.save("empty save", nil, nil, nil)
		}
		i := snapIndex + 1 + uint64(g.rng.IntN(int(commit-snapIndex)))
		var cs *pb.ConfState
		if g.rng.IntN(5) != 0 {
			cs = g.confState()
		}
		data := g.data()
		return write{
			desc:  fmt.Sprintf("CreateSnapshot(%d)", i),
			store: func(s *Store) (*pb.Snapshot, error) { return s.CreateSnapshot(i, cs, data) },
			model: func() (*pb.Snapshot, error) { return g.model.CreateSnapshot(i, cs, data) },
		}
	case r < 97: // compaction up to the snapshot, usually keeping some entries
		if snapIndex < first {
			return g.save("empty save", &pb.HardState{}, []*pb.Entry{}, &pb.Snapshot{})
		}
		ci := max(first, snapIndex-min(snapIndex, uint64(g.rng.IntN(40))))
		return write{
			desc:  fmt.Sprintf("Compact(%d)", ci),
			store: func(s *Store) (*pb.Snapshot, error) { return nil, s.Compact(ci) },
			model: func() (*pb.Snapshot, error) { return nil, g.model.Compact(ci) },
		}
	default: // a snapshot from the leader, maybe with entries after it
		idx := max(snapIndex, commit) + 1 + uint64(g.rng.IntN(int(last-min(last, max(snapIndex, commit))+8)))
		g.term++
		snap := &pb.Snapshot{
			Data:     g.data(),
			Metadata: &pb.SnapshotMetadata{Index: new(idx), Term: new(g.term), ConfState: g.confState()},
		}
		var es []*pb.Entry
		if n := g.rng.IntN(5); n > 0 {
			es = make([]*pb.Entry, n)
			for i := range es {
				es[i] = &pb.Entry{Index: new(idx + 1 + uint64(i)), Term: new(g.term), Data: g.data()}
			}
		}
		hs := &pb.HardState{Term: new(g.term), Vote: new(uint64(1)), Commit: new(idx)}
		if g.rng.IntN(5) == 0 {
			hs = nil
		}
		return g.save(fmt.Sprintf("install snapshot %d with %d entries", idx, len(es)), hs, es, snap)
	}
}

// save makes a write of one Ready; the model applies it as MemoryStorage
// users do: snapshot, then entries, then hard state.
func (g *gen) save(desc string, hs *pb.HardState, es []*pb.Entry, snap *pb.Snapshot) write {
	return write{
		desc:  desc,
		store: func(s *Store) (*pb.Snapshot, error) { return nil, s.Save(hs, es, snap) },
		model: func() (*pb.Snapshot, error) {
			if !raft.IsEmptySnap(snap) {
				if err := g.model.ApplySnapshot(proto.CloneOf(snap)); err != nil {
					return nil, err
				}
			}
			if err := g.model.Append(es); err != nil {
				return nil, err
			}
			if !raft.IsEmptyHardState(hs) {
				return nil, g.model.SetHardState(hs)
			}
			return nil, nil
		},
	}
}

// TestModel runs long random sequences of writes against a Store and a
// raft.MemoryStorage, reopening the store (with a different cache size, so
// reads come from pebble as well as the cache) at random points, and checks
// after every step that all raft.Storage answers agree.
func TestModel(t *testing.T) {
	steps := 1500
	if raceEnabled || testing.Short() {
		steps = 400
	}
	cacheSizes := []int64{1, 600, 4096, 0}
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			g := newGen(seed)
			fs := vfs.NewMem()
			s := openStore(t, fs, "db", cacheSizes[seed%4])
			meta := map[string][]byte{}
			for i := range steps {
				var what string
				switch r := g.rng.IntN(100); {
				case r < 3:
					mustClose(t, s)
					s = openStore(t, fs, "db", cacheSizes[g.rng.IntN(len(cacheSizes))])
					what = "reopen"
					// A reopened store reports its snapshot's index as
					// committed at least (load); so does the model now.
					hs, _, _ := g.model.InitialState()
					snap, _ := g.model.Snapshot()
					if err := g.model.SetHardState(committedThroughSnapshot(hs, snap.GetMetadata().GetIndex())); err != nil {
						t.Fatal(err)
					}
					for k, v := range meta {
						got, err := s.GetMeta(k)
						if err != nil || string(got) != string(v) {
							t.Fatalf("step %d: after reopen GetMeta(%q) = %q, %v; want %q", i, k, got, err, v)
						}
					}
				case r < 5:
					k, v := fmt.Sprintf("k%d", g.rng.IntN(4)), g.data()
					if err := s.SetMeta(k, v); err != nil {
						t.Fatalf("SetMeta: %v", err)
					}
					meta[k] = v
					what = "set meta " + k
				default:
					what = g.step(t, s)
				}
				checkAgainst(t, g.rng, s, g.model, fmt.Sprintf("seed %d step %d (%s)", seed, i, what))
			}
		})
	}
}
