package locks

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"testing"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	"google.golang.org/protobuf/proto"
)

// rng is a small deterministic generator (splitmix64) for the property
// tests; the package keeps math/rand out even of its tests.
type rng struct{ s uint64 }

func (r *rng) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	z := r.s
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (r *rng) intn(n int) int { return int(r.next() % uint64(n)) }

// pct is true with probability p percent.
func (r *rng) pct(p int) bool { return r.intn(100) < p }

func pick[T any](r *rng, xs []T) T { return xs[r.intn(len(xs))] }

var propNames = []string{"a", "a/1", "a/2", "b", "b/x", "c"}

// gen generates commands against the current state of a table.
type gen struct {
	r       *rng
	h       *harness
	caps    map[string]uint32
	reqSeq  uint64
	waiters []struct{ lease, id uint64 } // every waiter id seen
	tokens  map[string][]uint64          // every token granted, per lock
	history []*statev1.Command           // commands that carried a request id
	leases  []uint64                     // every lease id granted
	dead    map[uint64]bool              // leases that ended
	first   map[[2]uint64]*Result        // first result of each (lease, request id)
	window  map[uint64][]uint64          // model of each lease's dedup window
	maxTok  map[string]uint64            // highest token granted per lock
}

func newGen(seed uint64, h *harness) *gen {
	g := &gen{r: &rng{s: seed}, h: h, caps: map[string]uint32{}, tokens: map[string][]uint64{},
		dead: map[uint64]bool{}, first: map[[2]uint64]*Result{}, window: map[uint64][]uint64{}, maxTok: map[string]uint64{}}
	for i, n := range propNames {
		if i%2 == 0 {
			g.caps[n] = 1
		} else {
			g.caps[n] = uint32(1 + g.r.intn(3))
		}
	}
	return g
}

func (g *gen) aliveLeases() []uint64 {
	ids := make([]uint64, 0, len(g.h.tab.leases))
	for id := range g.h.tab.leases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// someLease is mostly a live lease, sometimes an ended or unknown one.
func (g *gen) someLease() uint64 {
	alive := g.aliveLeases()
	switch {
	case len(alive) > 0 && g.r.pct(90):
		return pick(g.r, alive)
	case len(g.leases) > 0 && g.r.pct(70):
		return pick(g.r, g.leases)
	default:
		return uint64(g.r.intn(5000))
	}
}

func (g *gen) reqID() uint64 {
	if g.r.pct(35) {
		return 0
	}
	g.reqSeq++
	return g.reqSeq
}

// holding returns a random current (lease, lock, token), if any.
func (g *gen) holding() (lease uint64, name string, token uint64, ok bool) {
	type hold struct {
		lease uint64
		name  string
		token uint64
	}
	var hs []hold
	for _, n := range sortedKeys(g.h.tab.locks) {
		for _, hd := range g.h.tab.locks[n].holders {
			hs = append(hs, hold{hd.lease.id, n, hd.token})
		}
	}
	if len(hs) == 0 {
		return 0, "", 0, false
	}
	x := pick(g.r, hs)
	return x.lease, x.name, x.token, true
}

// tokenFor picks the current token, zero, or a stale one.
func (g *gen) tokenFor(name string, current uint64) uint64 {
	switch k := g.r.intn(10); {
	case k < 6:
		return current
	case k < 8:
		return 0
	default:
		if old := g.tokens[name]; len(old) > 0 {
			return pick(g.r, old)
		}
		return current + 1
	}
}

func (g *gen) command() (cmd *statev1.Command, raw []byte) {
	r, h := g.r, g.h
	h.now += int64(r.intn(2_000_000_000))
	switch k := r.intn(100); {
	case k < 8 || len(h.tab.leases) < 2:
		if len(h.tab.leases) > 7 && r.pct(80) {
			return g.command()
		}
		ms := int64(1 + r.intn(60_000))
		if r.pct(3) {
			ms = -ms
		}
		c := cmdGrantMs(ms)
		c.GetGrantLease().Owner = fmt.Sprintf("owner-%d", r.intn(4))
		return c, nil
	case k < 11:
		return cmdRevoke(g.someLease()), nil
	case k < 15:
		term := h.term
		if r.pct(50) && term > 1 {
			term -= uint64(1 + r.intn(int(term-1)))
		}
		return cmdExpire(g.someLease(), term), nil
	case k < 50:
		a := &statev1.Acquire{LeaseId: g.someLease(), RequestId: g.reqID(), Try: r.pct(20), Mode: int32(r.intn(3))}
		first := pick(r, propNames)
		a.Names = []string{first}
		a.Capacity = g.caps[first]
		if r.pct(25) {
			for range 1 + r.intn(2) {
				n := pick(r, propNames)
				if slices.Contains(a.Names, n) || (g.caps[n] != a.Capacity && r.pct(80)) {
					continue
				}
				a.Names = append(a.Names, n)
			}
		}
		if r.pct(4) {
			a.Capacity = uint32(r.intn(4)) // a conflict, or 0 meaning 1
		}
		if r.pct(30) {
			a.LockDelayMs = pick(r, []int64{1, 500, 60_000})
		}
		if r.pct(30) {
			a.Value = []byte(fmt.Sprintf("v%d", r.intn(100)))
		}
		if r.pct(2) {
			a.Names = append(a.Names, pick(r, []string{"", "x//y", "/", "a/"}))
		}
		return cmdAcquire(a), nil
	case k < 66:
		lease, name, tok, ok := g.holding()
		if !ok || r.pct(10) {
			lease, name, tok = g.someLease(), pick(r, propNames), 0
		}
		return cmdReleaseReq(lease, name, g.tokenFor(name, tok), g.reqID()), nil
	case k < 72:
		if len(g.waiters) == 0 {
			return cmdCancel(g.someLease(), uint64(r.intn(100))), nil
		}
		// Mostly recent waiters, which may still wait or have just been
		// granted.
		from := max(0, len(g.waiters)-20)
		w := g.waiters[from+r.intn(len(g.waiters)-from)]
		lease := w.lease
		if r.pct(15) {
			lease = g.someLease()
		}
		return cmdCancel(lease, w.id), nil
	case k < 76:
		_, name, tok, ok := g.holding()
		if !ok || r.pct(20) {
			name, tok = pick(r, propNames), uint64(r.intn(int(h.tab.rev+2)))
		}
		if r.pct(40) {
			tok = 0
		}
		reason := pick(r, []string{"stuck", "admin: maintenance", "  padded  "})
		if r.pct(5) {
			reason = pick(r, []string{"", "   "})
		}
		return cmdForce(name, tok, reason), nil
	case k < 82:
		var delayed []DelayedLock
		for _, n := range sortedKeys(h.tab.locks) {
			if lk := h.tab.locks[n]; lk.delayed() {
				delayed = append(delayed, DelayedLock{Name: n, DelayRevision: lk.delayRev})
			}
		}
		if len(delayed) == 0 || r.pct(10) {
			return cmdEndDelay(pick(r, propNames), uint64(r.intn(int(h.tab.rev+2)))), nil
		}
		d := pick(r, delayed)
		rev := d.DelayRevision
		if r.pct(30) {
			rev = pick(r, []uint64{rev - 1, rev + 1, 0})
		}
		return cmdEndDelay(d.Name, rev), nil
	case k < 87:
		lease, name, tok, ok := g.holding()
		if !ok || r.pct(10) {
			lease, name, tok = g.someLease(), pick(r, propNames), 0
		}
		c := cmdSetValue(lease, name, g.tokenFor(name, tok), fmt.Sprintf("val-%d", r.intn(1000)))
		if r.pct(2) {
			c.GetSetValue().Value = make([]byte, MaxValueBytes+1)
		}
		c.GetSetValue().RequestId = g.reqID()
		return c, nil
	case k < 96:
		if len(g.history) == 0 {
			return g.command()
		}
		// A retry of an earlier request, with its request id (and its
		// original time, as a proposal retried by the client carries a
		// new one: either way the first result comes back).
		from := max(0, len(g.history)-60)
		c := proto.Clone(g.history[from+r.intn(len(g.history)-from)]).(*statev1.Command)
		c.ProposedUnixNano = h.now
		return c, nil
	case k < 98:
		return nil, nil // a term change
	default:
		garbage := make([]byte, 1+r.intn(12))
		for i := range garbage {
			garbage[i] = byte(r.next())
		}
		return nil, garbage
	}
}

// requestOf returns the lease and request id of a de-duplicated command.
func requestOf(c *statev1.Command) (lease, req uint64, ok bool) {
	switch op := c.GetOp().(type) {
	case *statev1.Command_Acquire:
		return op.Acquire.GetLeaseId(), op.Acquire.GetRequestId(), true
	case *statev1.Command_Release:
		return op.Release.GetLeaseId(), op.Release.GetRequestId(), true
	case *statev1.Command_SetValue:
		return op.SetValue.GetLeaseId(), op.SetValue.GetRequestId(), true
	}
	return 0, 0, false
}

// TestProperties applies seeded random command sequences and checks the
// table's invariants after every command; midway it restores the table's
// snapshot into fresh tables and keeps applying the same commands to both,
// which must stay byte-identical and answer alike.
func TestProperties(t *testing.T) {
	seeds := []uint64{1, 2, 3, 4, 5, 6, 7, 8}
	steps := 3000
	if testing.Short() {
		seeds, steps = seeds[:2], 1000
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			t.Parallel()
			runProperties(t, seed, steps)
		})
	}
}

func runProperties(t *testing.T, seed uint64, steps int) {
	h := newHarness(t)
	g := newGen(seed, h)
	var replica *Table // restored from h's snapshot midway
	var replicaEvents []Event
	restoreAt := []int{steps / 3, 2 * steps / 3}
	counts := map[string]int{}
	after := h.snap()
	var afterState []byte // lockState(after), once needed

	for step := range steps {
		if slices.Contains(restoreAt, step) {
			snap := h.snap()
			replica = NewTable()
			replica.Observe(func(evs []Event) { replicaEvents = append(replicaEvents, evs...) })
			if err := replica.Restore(snap); err != nil {
				t.Fatalf("step %d: restore: %v", step, err)
			}
			back, err := replica.Snapshot()
			if err != nil || !bytes.Equal(back, snap) {
				t.Fatalf("step %d: restored table snapshots differently (%v)", step, err)
			}
			if err := checkInvariants(replica); err != nil {
				t.Fatalf("step %d: restored table: %v", step, err)
			}
		}

		cmd, raw := g.command()
		before, beforeState := after, afterState // nothing changed h's table since
		revBefore := h.tab.Revision()
		queuesBefore := queuesOf(h.tab)
		nEvents := len(h.events)
		var data []byte
		switch {
		case cmd != nil:
			if cmd.GetProposedUnixNano() == 0 {
				cmd.ProposedUnixNano = h.now
			}
			data = encode(cmd)
		case raw != nil:
			data = raw
		default:
			h.term++ // an empty entry of a new term
		}
		h.index++
		out := h.tab.Apply(h.index, h.term, data)
		var res *Result
		if out != nil {
			res = out.(*Result)
		}
		evs := h.events[nEvents:]
		if err := checkInvariants(h.tab); err != nil {
			t.Fatalf("seed %d step %d: after %v: %v", seed, step, cmd, err)
		}
		after, afterState = h.snap(), nil
		rev := h.tab.Revision()
		desc := fmt.Sprintf("seed %d step %d: %v (raw %x) -> %+v", seed, step, cmd, raw, res)

		// No waiter is granted before an earlier one: the command's grants
		// take, in order, the heads of the queues as they stood before it
		// (less the waiters that left without a grant).
		if err := checkFairGrants(queuesBefore, evs, queuesOf(h.tab)); err != nil {
			t.Fatalf("%s\nunfair grant: %v\nevents %+v", desc, err, evs)
		}

		// The replica answers alike and stays byte-identical.
		if replica != nil {
			nr := len(replicaEvents)
			rout := replica.Apply(h.index, h.term, data)
			if !reflect.DeepEqual(out, rout) {
				t.Fatalf("%s\nreplica answered %+v", desc, rout)
			}
			rsnap, err := replica.Snapshot()
			if err != nil || !bytes.Equal(rsnap, after) {
				t.Fatalf("%s\nreplica diverged:\n%s\nvs\n%s", desc, snapText(rsnap), snapText(after))
			}
			if !reflect.DeepEqual(replicaEvents[nr:], evs) && !(len(evs) == 0 && len(replicaEvents) == nr) {
				t.Fatalf("%s\nreplica events %+v, want %+v", desc, replicaEvents[nr:], evs)
			}
			if err := checkInvariants(replica); err != nil {
				t.Fatalf("%s\nreplica: %v", desc, err)
			}
		}

		// The revision never decreases; a change of state moves it, and
		// every event lies in the command's revisions.
		if rev < revBefore {
			t.Fatalf("%s\nrevision went back from %d to %d", desc, revBefore, rev)
		}
		for i, e := range evs {
			if e.Revision <= revBefore || e.Revision > rev || (i > 0 && e.Revision < evs[i-1].Revision) {
				t.Fatalf("%s\nevent %+v outside (%d, %d]", desc, e, revBefore, rev)
			}
		}
		stateChanged := false
		if !bytes.Equal(before, after) {
			if beforeState == nil {
				beforeState = lockState(t, before)
			}
			afterState = lockState(t, after)
			stateChanged = !bytes.Equal(beforeState, afterState)
		}
		if stateChanged != (rev != revBefore) || (rev != revBefore) != (len(evs) > 0) {
			t.Fatalf("%s\nstate changed %v, revision %d -> %d, %d events", desc, stateChanged, revBefore, rev, len(evs))
		}
		if res == nil {
			if data != nil || stateChanged {
				t.Fatalf("%s\nnil result", desc)
			}
			counts["term"]++
			continue
		}

		// Tokens per lock strictly increase, and are the grant's revision.
		for _, e := range evs {
			if e.Type != Granted {
				continue
			}
			if e.Token != e.Revision || e.Token <= g.maxTok[e.Name] {
				t.Fatalf("%s\ngrant %+v after token %d", desc, e, g.maxTok[e.Name])
			}
			g.maxTok[e.Name] = e.Token
			g.tokens[e.Name] = append(g.tokens[e.Name], e.Token)
		}

		lease, req, dedupCmd := requestOf(cmd)
		_, leaseAlive := h.tab.leases[lease]
		if cmd != nil {
			if _, ok := cmd.GetOp().(*statev1.Command_GrantLease); ok && res.Err == nil {
				g.leases = append(g.leases, res.LeaseID)
			}
		}
		switch {
		case res.Duplicate:
			counts["duplicate"]++
			if !dedupCmd || req == 0 || !slices.Contains(g.window[lease], req) {
				t.Fatalf("%s\nduplicate of a request not in the window %v", desc, g.window[lease])
			}
			if !bytes.Equal(before, after) {
				t.Fatalf("%s\nduplicate changed the table", desc)
			}
			want := *g.first[[2]uint64{lease, req}]
			want.Duplicate = true
			if !reflect.DeepEqual(res, &want) {
				t.Fatalf("%s\nduplicate answered %+v, first answer %+v", desc, res, &want)
			}
			continue
		case dedupCmd && req != 0 && leaseAlive:
			if slices.Contains(g.window[lease], req) {
				t.Fatalf("%s\nrequest %d of lease %d was in the window but ran again", desc, req, lease)
			}
			w := append(g.window[lease], req)
			if len(w) > dedupPerLease {
				w = w[1:]
			}
			g.window[lease] = w
			g.first[[2]uint64{lease, req}] = res
			g.history = append(g.history, cmd)
		}

		if res.Err != nil {
			counts["error "+res.Err.Code.String()]++
			// A failed command changes nothing but, with a request id, its
			// lease's memory of the result.
			if stateChanged || rev != revBefore || len(evs) != 0 {
				t.Fatalf("%s\nfailed command changed the table", desc)
			}
			if !(dedupCmd && req != 0 && leaseAlive) && !bytes.Equal(before, after) {
				t.Fatalf("%s\nfailed command without request id changed the snapshot", desc)
			}
			if res.Granted || res.Tokens != nil || res.Ignored {
				t.Fatalf("%s\nfailed result carries more", desc)
			}
			continue
		}
		if res.Ignored {
			counts["ignored"]++
			if !bytes.Equal(before, after) || res.Revision != rev {
				t.Fatalf("%s\nignored command changed the table", desc)
			}
			continue
		}
		if res.Revision != rev {
			t.Fatalf("%s\nresult revision %d, table %d", desc, res.Revision, rev)
		}
		switch op := cmd.GetOp().(type) {
		case *statev1.Command_Acquire:
			a := op.Acquire
			if res.WaiterID != 0 {
				g.waiters = append(g.waiters, struct{ lease, id uint64 }{a.GetLeaseId(), res.WaiterID})
			}
			switch {
			case res.Granted:
				counts["acquire granted"]++
				if len(res.Tokens) != len(a.GetNames()) {
					t.Fatalf("%s\ntokens for %d locks", desc, len(a.GetNames()))
				}
				for i, n := range a.GetNames() {
					hd := h.tab.leases[a.GetLeaseId()].holds[n]
					if hd == nil || hd.token != res.Tokens[i] {
						t.Fatalf("%s\n%q not held with token %d", desc, n, res.Tokens[i])
					}
				}
			case res.WaiterID != 0:
				counts["acquire queued"]++
				if w := h.tab.waiters[res.WaiterID]; w == nil || w.lease.id != a.GetLeaseId() {
					t.Fatalf("%s\nwaiter %d not in the table", desc, res.WaiterID)
				}
			default:
				counts["try busy"]++
				if !a.GetTry() || stateChanged {
					t.Fatalf("%s\nneither granted nor queued", desc)
				}
			}
		case *statev1.Command_Cancel:
			counts[fmt.Sprint("cancel ", res.Count)]++
		default:
			counts[fmt.Sprintf("%T", op)]++
		}
	}
	// The generator reaches every kind of outcome.
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, want := range []string{"acquire granted", "acquire queued", "try busy", "duplicate", "ignored", "cancel 1",
		"error invalid", "error not found", "error not holder", "error conflict",
		"*statev1.Command_Release", "*statev1.Command_ForceRelease", "*statev1.Command_EndDelay", "*statev1.Command_SetValue",
		"*statev1.Command_RevokeLease", "*statev1.Command_ExpireLease", "*statev1.Command_GrantLease"} {
		if counts[want] == 0 {
			t.Errorf("seed %d: no %q in %d steps: %v", seed, want, steps, counts)
		}
	}
	if testing.Verbose() {
		for _, k := range keys {
			t.Logf("%-32s %d", k, counts[k])
		}
	}
}
