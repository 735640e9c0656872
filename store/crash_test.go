package store

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// crashOpen opens the store in a crash clone of fs, as a restarted node would
// after a power cut at this instant. unsyncedPercent of the data that was
// written but not synced survives.
func crashOpen(t *testing.T, fs *vfs.MemFS, rng *rand.Rand, unsyncedPercent int) (*Store, error) {
	t.Helper()
	clone := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: unsyncedPercent, RNG: rng})
	return Open("db", Options{FS: clone, CacheBytes: int64(rng.IntN(2000))})
}

// TestCrashAfterWrite takes a crash clone after every acknowledged write
// (with none, and with a random share, of the unsynced data) and checks that
// the reopened store holds exactly the state the model has: everything
// synced, nothing lost, nothing half-applied.
func TestCrashAfterWrite(t *testing.T) {
	steps := 250
	if raceEnabled || testing.Short() {
		steps = 60
	}
	for seed := uint64(1); seed <= 2; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			g := newGen(100 + seed)
			rng := rand.New(rand.NewPCG(seed, 42))
			fs := vfs.NewCrashableMem()
			s := openStore(t, fs, "db", 1000)
			meta := map[string]string{}
			for i := range steps {
				what := "set meta"
				if g.rng.IntN(20) == 0 {
					k, v := fmt.Sprintf("k%d", g.rng.IntN(3)), fmt.Sprint(i)
					if err := s.SetMeta(k, []byte(v)); err != nil {
						t.Fatal(err)
					}
					meta[k] = v
				} else {
					what = g.step(t, s)
				}
				pct := 0
				if rng.IntN(2) == 0 {
					pct = rng.IntN(101)
				}
				c, err := crashOpen(t, fs, rng, pct)
				if err != nil {
					t.Fatalf("step %d (%s): reopen after crash (unsynced %d%%): %v", i, what, pct, err)
				}
				want, _ := capture(g.model)
				want = reopened(want)
				got, err := capture(c)
				if err != nil {
					t.Fatalf("step %d (%s): after crash: %v", i, what, err)
				}
				if d := diff(got, want); d != "" {
					t.Fatalf("step %d (%s): after crash (unsynced %d%%): %s", i, what, pct, d)
				}
				for k, v := range meta {
					if got, err := c.GetMeta(k); err != nil || string(got) != v {
						t.Fatalf("step %d: after crash GetMeta(%q) = %q, %v; want %q", i, k, got, err, v)
					}
				}
				mustClose(t, c)
			}
		})
	}
}

// TestCrashDuringWrite crashes while a write is in flight: clones taken
// while Save, CreateSnapshot or Compact runs must reopen to either the state
// before the write or the state after it, never a mix, whatever share of the
// unsynced data survives.
func TestCrashDuringWrite(t *testing.T) {
	steps := 200
	if raceEnabled || testing.Short() {
		steps = 60
	}
	g := newGen(7)
	rng := rand.New(rand.NewPCG(7, 7))
	fs := vfs.NewCrashableMem()
	s := openStore(t, fs, "db", 1000)
	var before, after, clones int
	for i := range steps {
		w := g.next()
		pre, _ := capture(g.model)
		pre = reopened(pre)

		type result struct {
			snap *pb.Snapshot
			err  error
		}
		done := make(chan result, 1)
		go func() {
			snap, err := w.store(s)
			done <- result{snap, err}
		}()
		var crashed []*vfs.MemFS
		var res result
	wait:
		for {
			select {
			case res = <-done:
				break wait
			default:
				if len(crashed) < 3 {
					pct := []int{0, 50, 100}[rng.IntN(3)]
					crashed = append(crashed, fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rng}))
				}
				runtime.Gosched()
			}
		}
		if res.err != nil {
			t.Fatalf("step %d: %s: %v", i, w.desc, res.err)
		}
		want, err := w.model()
		if err != nil {
			t.Fatalf("step %d: %s: model: %v", i, w.desc, err)
		}
		if !proto.Equal(pb.EnsureSnapshot(res.snap), pb.EnsureSnapshot(want)) {
			t.Fatalf("step %d: %s = %v, model %v", i, w.desc, res.snap.GetMetadata(), want.GetMetadata())
		}
		post, _ := capture(g.model)
		post = reopened(post)

		for j, cfs := range crashed {
			c, err := Open("db", Options{FS: cfs, CacheBytes: int64(rng.IntN(2000))})
			if err != nil {
				t.Fatalf("step %d (%s): reopen crash clone %d: %v", i, w.desc, j, err)
			}
			got, err := capture(c)
			if err != nil {
				t.Fatalf("step %d (%s): crash clone %d: %v", i, w.desc, j, err)
			}
			switch {
			case diff(got, post) == "":
				after++
			case diff(got, pre) == "":
				before++
			default:
				t.Fatalf("step %d (%s): crash clone %d is neither the state before (%s) nor after (%s)",
					i, w.desc, j, diff(got, pre), diff(got, post))
			}
			clones++
			mustClose(t, c)
		}
	}
	t.Logf("%d crash clones taken during writes: %d reopened to the state before, %d to the state after",
		clones, before, after)
	if clones == 0 {
		t.Fatal("no crash clone was taken during a write")
	}
}
