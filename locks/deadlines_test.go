package locks

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// t0 is the fake monotonic clock's origin: Deadlines never reads a clock.
var t0 = time.Unix(0, 0)

func at(d time.Duration) time.Time { return t0.Add(d) }

func sortedIDs(ids []uint64) []uint64 {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
}

func TestDeadlinesEmpty(t *testing.T) {
	d := NewDeadlines()
	if d.Len() != 0 {
		t.Fatal("new tracker not empty")
	}
	if got := d.Expired(at(time.Hour), 10); got != nil {
		t.Fatalf("Expired on empty = %v", got)
	}
	if _, ok := d.KeepAlive(1, t0); ok {
		t.Fatal("KeepAlive of an untracked lease")
	}
	if _, ok := d.Remaining(1, t0); ok {
		t.Fatal("Remaining of an untracked lease")
	}
	d.Remove(1) // no-op
	if d.Len() != 0 {
		t.Fatal("Remove of nothing changed the length")
	}
}

func TestDeadlinesAddKeepAliveRemove(t *testing.T) {
	d := NewDeadlines()
	d.Add(1, 10*time.Second, at(0))
	d.Add(2, 5*time.Second, at(time.Second))
	if d.Len() != 2 {
		t.Fatalf("Len = %d", d.Len())
	}
	if r, ok := d.Remaining(1, at(4*time.Second)); !ok || r != 6*time.Second {
		t.Fatalf("Remaining(1) = %v, %v", r, ok)
	}
	// Due means not after now: exactly at the deadline it is due.
	if got := d.Expired(at(6*time.Second-1), 10); got != nil {
		t.Fatalf("Expired just before the first deadline = %v", got)
	}
	if got := d.Expired(at(6*time.Second), 10); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("Expired at lease 2's deadline = %v", got)
	}
	// A keep-alive moves the deadline to now+TTL and returns the TTL.
	ttl, ok := d.KeepAlive(2, at(5*time.Second))
	if !ok || ttl != 5*time.Second {
		t.Fatalf("KeepAlive = %v, %v", ttl, ok)
	}
	if got := d.Expired(at(9*time.Second), 10); got != nil {
		t.Fatalf("Expired after keep-alive = %v", got)
	}
	if got := sortedIDs(d.Expired(at(10*time.Second), 10)); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("Expired at 10s = %v", got)
	}
	// Due leases stay tracked until removed: the expiry is proposed again
	// if it did not commit.
	if got := sortedIDs(d.Expired(at(10*time.Second), 10)); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("Expired again = %v", got)
	}
	if r, _ := d.Remaining(1, at(12*time.Second)); r != -2*time.Second {
		t.Fatalf("Remaining past the deadline = %v", r)
	}
	d.Remove(1)
	if d.Len() != 1 {
		t.Fatalf("Len = %d", d.Len())
	}
	if got := d.Expired(at(time.Hour), 10); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("Expired after Remove = %v", got)
	}
	if _, ok := d.KeepAlive(1, at(0)); ok {
		t.Fatal("KeepAlive of a removed lease")
	}
	// Add of a tracked lease restarts it with the new TTL.
	d.Add(2, time.Minute, at(time.Hour))
	if d.Len() != 1 {
		t.Fatalf("re-Add duplicated the lease: Len = %d", d.Len())
	}
	if r, _ := d.Remaining(2, at(time.Hour)); r != time.Minute {
		t.Fatalf("Remaining after re-Add = %v", r)
	}
	if ttl, _ := d.KeepAlive(2, at(2*time.Hour)); ttl != time.Minute {
		t.Fatalf("TTL after re-Add = %v", ttl)
	}
}

func TestDeadlinesReset(t *testing.T) {
	d := NewDeadlines()
	for i := range 10 {
		d.Add(uint64(100+i), time.Second, at(0))
	}
	// A new leader restarts every deadline at now+TTL, and forgets
	// leases it is not given.
	now := at(time.Hour)
	d.Reset([]LeaseTTL{{ID: 1, TTL: 3 * time.Second}, {ID: 2, TTL: time.Second}, {ID: 3, TTL: 2 * time.Second}}, now)
	if d.Len() != 3 {
		t.Fatalf("Len = %d", d.Len())
	}
	if _, ok := d.Remaining(100, now); ok {
		t.Fatal("Reset kept an old lease")
	}
	if got := d.Expired(now.Add(time.Second-1), 10); got != nil {
		t.Fatalf("Expired before any new deadline = %v", got)
	}
	for i, want := range [][]uint64{{2}, {2, 3}, {1, 2, 3}} {
		if got := sortedIDs(d.Expired(now.Add(time.Duration(i+1)*time.Second), 10)); !slices.Equal(got, want) {
			t.Fatalf("Expired at +%ds = %v, want %v", i+1, got, want)
		}
	}
	// The heap works after a Reset: keep-alives, adds, removes.
	d.KeepAlive(2, now.Add(10*time.Second))
	d.Add(4, time.Second, now)
	d.Remove(3)
	if got := sortedIDs(d.Expired(now.Add(5*time.Second), 10)); !slices.Equal(got, []uint64{1, 4}) {
		t.Fatalf("Expired = %v", got)
	}
	d.Reset(nil, now)
	if d.Len() != 0 || d.Expired(now.Add(time.Hour), 10) != nil {
		t.Fatal("Reset(nil) left leases")
	}
}

func TestDeadlinesExpiredMax(t *testing.T) {
	d := NewDeadlines()
	for i := range 50 {
		d.Add(uint64(i+1), time.Duration(i+1)*time.Second, t0)
	}
	now := at(30 * time.Second) // leases 1..30 are due
	for _, max := range []int{0, 1, 7, 29, 30, 31, 1000} {
		got := d.Expired(now, max)
		if want := min(max, 30); len(got) != want {
			t.Fatalf("Expired(max=%d) returned %d, want %d", max, len(got), want)
		}
		seen := map[uint64]bool{}
		for _, id := range got {
			if id < 1 || id > 30 || seen[id] {
				t.Fatalf("Expired(max=%d) = %v: not due or repeated", max, got)
			}
			seen[id] = true
		}
	}
}

// TestDeadlinesModel drives Deadlines and a plain map with the same random
// operations; Expired must return exactly the due leases (or max of them),
// never one that is not due.
func TestDeadlinesModel(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			r := &rng{s: seed}
			d := NewDeadlines()
			type entry struct {
				ttl time.Duration
				at  time.Time
			}
			model := map[uint64]entry{}
			now := t0
			for step := range 2000 {
				now = now.Add(time.Duration(r.intn(300)) * time.Millisecond)
				id := uint64(1 + r.intn(40))
				switch k := r.intn(100); {
				case k < 30:
					ttl := time.Duration(1+r.intn(5000)) * time.Millisecond
					d.Add(id, ttl, now)
					model[id] = entry{ttl, now.Add(ttl)}
				case k < 60:
					ttl, ok := d.KeepAlive(id, now)
					e, tracked := model[id]
					if ok != tracked || (ok && ttl != e.ttl) {
						t.Fatalf("step %d: KeepAlive(%d) = %v, %v; model %v, %v", step, id, ttl, ok, e, tracked)
					}
					if tracked {
						model[id] = entry{e.ttl, now.Add(e.ttl)}
					}
				case k < 75:
					d.Remove(id)
					delete(model, id)
				case k < 77:
					var ls []LeaseTTL
					ids := make([]uint64, 0, len(model))
					for id := range model {
						ids = append(ids, id)
					}
					slices.Sort(ids) // the rng's draws must not follow map order
					for _, id := range ids {
						if r.pct(80) {
							ls = append(ls, LeaseTTL{ID: id, TTL: model[id].ttl})
						}
					}
					d.Reset(ls, now)
					model = map[uint64]entry{}
					for _, l := range ls {
						model[l.ID] = entry{l.TTL, now.Add(l.TTL)}
					}
				default:
					var due []uint64
					for id, e := range model {
						if !e.at.After(now) {
							due = append(due, id)
						}
					}
					slices.Sort(due)
					max := 1 + r.intn(10)
					if r.pct(50) {
						max = 1000
					}
					got := sortedIDs(d.Expired(now, max))
					if len(got) != min(max, len(due)) {
						t.Fatalf("step %d: Expired(max=%d) = %v, due %v", step, max, got, due)
					}
					for i, id := range got {
						if !slices.Contains(due, id) || (i > 0 && got[i-1] == id) {
							t.Fatalf("step %d: Expired = %v includes %d, due %v", step, got, id, due)
						}
					}
				}
				if d.Len() != len(model) {
					t.Fatalf("step %d: Len %d, model %d", step, d.Len(), len(model))
				}
				for id, e := range model {
					if rem, ok := d.Remaining(id, now); !ok || rem != e.at.Sub(now) {
						t.Fatalf("step %d: Remaining(%d) = %v, %v; want %v", step, id, rem, ok, e.at.Sub(now))
					}
				}
			}
		})
	}
}
