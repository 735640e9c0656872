package locks

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	"google.golang.org/protobuf/proto"
)

// fuzzBase is the table FuzzApply starts from: buildTable's leases, holders
// of every mode, a multi-lock waiter, values, a delay and dedup records.
func fuzzBase(f *testing.F) (snap []byte, term uint64) {
	h := buildTable(f)
	return h.snap(), h.term
}

// seedCommands returns real encoded commands of every type, aimed at the
// contents of the table in snap.
func seedCommands(t testing.TB, snap []byte, term uint64) [][]byte {
	tab := NewTable()
	if err := tab.Restore(snap); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	add := func(c *statev1.Command) {
		c.ProposedUnixNano = testNow
		out = append(out, encode(c))
	}
	leases := make([]uint64, 0, len(tab.leases))
	for id := range tab.leases {
		leases = append(leases, id)
	}
	slices.Sort(leases)
	add(cmdGrant(time.Second, "fuzz"))
	add(cmdGrantMs(-1))
	add(cmdGrantMs(overflowMs))
	for _, id := range leases {
		add(cmdRevoke(id))
		add(cmdExpire(id, term))
		add(cmdExpire(id, term-1))
		add(cmdAcq(id, "m"))
		add(cmdAcq(id, "new", "m", "s"))
		add(cmdAcquire(&statev1.Acquire{LeaseId: id, Names: []string{"s"}, Capacity: 3, Mode: int32(ModeShared), Try: true}))
		add(cmdAcquire(&statev1.Acquire{LeaseId: id, Names: []string{"dl"}, LockDelayMs: 10, RequestId: 1}))
		add(cmdAcquire(&statev1.Acquire{LeaseId: id, Names: []string{"rw", "m"}, RequestId: 7}))
		for _, w := range tab.leases[id].waits {
			add(cmdCancel(id, w.id))
		}
	}
	for _, n := range sortedKeys(tab.locks) {
		lk := tab.locks[n]
		for _, hd := range lk.holders {
			add(cmdRelease(hd.lease.id, n, hd.token))
			add(cmdReleaseReq(hd.lease.id, n, hd.token, 1))
			add(cmdSetValue(hd.lease.id, n, hd.token, "v2"))
			add(cmdForce(n, hd.token, "fuzz"))
			add(cmdCancel(hd.lease.id, hd.waiterID))
		}
		add(cmdForce(n, 0, ""))
		add(cmdEndDelay(n, lk.delayRev))
		add(cmdEndDelay(n, lk.delayRev+1))
	}
	add(&statev1.Command{})
	return out
}

// FuzzApply applies arbitrary bytes as a command to a table with state in
// it: Apply must not panic, a failure changes nothing, the invariants hold,
// and the outcome is deterministic (a table restored from the same
// snapshot answers alike and ends byte-identical).
func FuzzApply(f *testing.F) {
	base, term := fuzzBase(f)
	for _, c := range seedCommands(f, base, term) {
		f.Add(c)
	}
	for _, g := range [][]byte{nil, {0}, {0xff}, {0x0a, 0x00}, {0x6a, 0x02, 0x08, 0x01}, []byte("garbage"), bytes.Repeat([]byte{0x80}, 12)} {
		f.Add(g)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tab, twin := NewTable(), NewTable()
		if err := tab.Restore(base); err != nil {
			t.Fatal(err)
		}
		if err := twin.Restore(base); err != nil {
			t.Fatal(err)
		}
		var evs, twinEvs []Event
		tab.Observe(func(e []Event) { evs = append(evs, e...) })
		twin.Observe(func(e []Event) { twinEvs = append(twinEvs, e...) })
		rev := tab.Revision()
		queuesBefore := queuesOf(tab)

		out := tab.Apply(100, term, data)
		after, err := tab.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		if err := checkInvariants(tab); err != nil {
			t.Fatalf("invariants after %x: %v", data, err)
		}
		if err := checkFairGrants(queuesBefore, evs, queuesOf(tab)); err != nil {
			t.Fatalf("unfair grant after %x: %v", data, err)
		}
		if tout := twin.Apply(100, term, data); !reflect.DeepEqual(out, tout) {
			t.Fatalf("twin answered %+v, table %+v", tout, out)
		}
		if ts, _ := twin.Snapshot(); !bytes.Equal(ts, after) || !reflect.DeepEqual(evs, twinEvs) {
			t.Fatal("twin diverged")
		}
		if out == nil {
			if len(data) != 0 || !bytes.Equal(after, base) {
				t.Fatalf("nil result for %x", data)
			}
			return
		}
		res := out.(*Result)
		cmd := new(statev1.Command)
		decoded := proto.Unmarshal(data, cmd) == nil
		_, req, dedupCmd := requestOf(cmd)
		switch {
		case res.Err != nil:
			if res.Err.Msg == "" || res.Err.Code <= OK || res.Err.Code > Quota {
				t.Fatalf("error %#v", res.Err)
			}
			if !bytes.Equal(lockState(t, base), lockState(t, after)) || tab.Revision() != rev || len(evs) != 0 {
				t.Fatalf("failed command %v changed the table", cmd)
			}
			if !(decoded && dedupCmd && req != 0) && !bytes.Equal(base, after) {
				t.Fatalf("failed command %v without request id changed the snapshot", cmd)
			}
		case res.Ignored, res.Duplicate:
			if !bytes.Equal(base, after) || len(evs) != 0 {
				t.Fatalf("ignored or duplicate command %v changed the table", cmd)
			}
		default:
			if res.Revision != tab.Revision() {
				t.Fatalf("result revision %d, table %d", res.Revision, tab.Revision())
			}
		}
		changed := !bytes.Equal(lockState(t, base), lockState(t, after))
		if changed != (tab.Revision() != rev) || (tab.Revision() != rev) != (len(evs) > 0) {
			t.Fatalf("%v: changed %v, revision %d -> %d, %d events", cmd, changed, rev, tab.Revision(), len(evs))
		}
		for _, e := range evs {
			if e.Revision <= rev || e.Revision > tab.Revision() {
				t.Fatalf("event %+v outside (%d, %d]", e, rev, tab.Revision())
			}
			if e.Type == Granted && e.Token != e.Revision {
				t.Fatalf("grant %+v", e)
			}
		}
		// The new state snapshots and restores faithfully.
		back := NewTable()
		if err := back.Restore(after); err != nil {
			t.Fatal(err)
		}
		if bs, _ := back.Snapshot(); !bytes.Equal(bs, after) {
			t.Fatal("snapshot does not round-trip")
		}
		// The same bytes once more: a retry, or a second command.
		out2 := tab.Apply(101, term, data)
		if err := checkInvariants(tab); err != nil {
			t.Fatalf("invariants after applying %x twice: %v", data, err)
		}
		res2 := out2.(*Result)
		if decoded && dedupCmd && req != 0 && (res.Err == nil || res.Err.Code != NotFound) {
			// The lease existed, so the first result was remembered.
			want := *res
			want.Duplicate = true
			if !reflect.DeepEqual(res2, &want) {
				t.Fatalf("retry of %v answered %+v, first %+v", cmd, res2, res)
			}
		}
	})
}

// FuzzValidateName checks ValidateName against the model's statement of a
// valid name, and that Apply agrees with it.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"a", "a/b", "a//b", "/a", "a/", "/", "", "\x00", "a\tb", "\x7f", "\u0085", "\u200b",
		"\xff", "caf\xc3", "日本/語", "ünï/çødé", " ", strings.Repeat("x", MaxNameBytes), strings.Repeat("x", MaxNameBytes+1),
		strings.Repeat("é", MaxNameBytes/2), strings.Repeat("é", MaxNameBytes/2) + "x", "a/b/c/d", "🔒/🔑"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidateName(name)
		want := refValidName(name)
		if (err == nil) != (want == nil) {
			t.Fatalf("ValidateName(%q) = %v, model says %v", name, err, want)
		}
		if err != nil {
			e, ok := err.(*Error)
			if !ok || e.Code != Invalid || e.Msg == "" {
				t.Fatalf("ValidateName(%q) = %#v", name, err)
			}
			if len(name) <= MaxNameBytes && utf8.ValidString(name) && !strings.Contains(e.Msg, "lock name") {
				t.Fatalf("message %q does not say what is wrong", e.Msg)
			}
		} else {
			ns := Namespace(name)
			if ns == "" || !strings.HasPrefix(name, ns) || strings.Contains(ns, "/") {
				t.Fatalf("Namespace(%q) = %q", name, ns)
			}
		}
		// Apply checks names the same way. Protobuf carries only valid
		// UTF-8 in strings, so the rest cannot reach it.
		if !utf8.ValidString(name) {
			return
		}
		tab := NewTable()
		tab.Apply(1, 1, encode(cmdGrant(time.Second, "")))
		res := tab.Apply(2, 1, encode(cmdAcq(1, name))).(*Result)
		if err == nil && (res.Err != nil || !res.Granted) {
			t.Fatalf("valid name %q: %+v", name, res)
		}
		if err != nil && (res.Err == nil || res.Err.Code != Invalid) {
			t.Fatalf("invalid name %q: %+v", name, res)
		}
	})
}

// FuzzValidateAcquire builds a GrantLease and an Acquire from fuzzed fields
// (TTL, owner, principal; names, mode, capacity, lock delay, value size,
// try) and applies them to a table with a held lock in it. The model below
// says which are invalid: those must fail with Invalid and leave the table
// byte-identical (no revision, no event); every other one must apply: a
// lease granted, an acquire granted, queued, busy (a try) or, naming the
// held lock with another capacity, a Conflict.
func FuzzValidateAcquire(f *testing.F) {
	long := strings.Repeat("x", MaxNameBytes)
	for _, s := range []struct {
		ttlMs            int64
		owner, principal string
		names            string
		mode             int32
		capacity         uint32
		delayMs          int64
		valueLen         uint16
		extra            uint8
		try              bool
	}{
		{ttlMs: 10_000, owner: "o", names: "a"},
		{ttlMs: 10_000, names: "a,b/c,held", mode: 2, capacity: 1, try: true},
		{ttlMs: 10_000, names: "held", capacity: 3},
		{ttlMs: 10_000, names: "held", mode: int32(ModeShared)},
		{ttlMs: MaxTTL.Milliseconds(), owner: strings.Repeat("o", MaxOwnerBytes), principal: "p", names: "a", valueLen: MaxValueBytes},
		{ttlMs: MaxTTL.Milliseconds() + 1, names: "a"},
		{ttlMs: 0, names: "a"},
		{ttlMs: -1, names: "a"},
		{ttlMs: overflowMs, names: "a"},
		{ttlMs: 1000, owner: strings.Repeat("o", MaxOwnerBytes+1), names: "a"},
		{ttlMs: 1000, principal: strings.Repeat("p", MaxOwnerBytes+1), names: "a"},
		{ttlMs: 1000, names: ""},
		{ttlMs: 1000, names: "a,a"},
		{ttlMs: 1000, names: "a//b"},
		{ttlMs: 1000, names: "a\x00"},
		{ttlMs: 1000, names: long},
		{ttlMs: 1000, names: long + "y"},
		{ttlMs: 1000, names: "a", mode: 3},
		{ttlMs: 1000, names: "a", mode: -1},
		{ttlMs: 1000, names: "a", capacity: MaxCapacity},
		{ttlMs: 1000, names: "a", capacity: MaxCapacity + 1},
		{ttlMs: 1000, names: "a", delayMs: MaxLockDelay.Milliseconds()},
		{ttlMs: 1000, names: "a", delayMs: MaxLockDelay.Milliseconds() + 1},
		{ttlMs: 1000, names: "a", delayMs: -1},
		{ttlMs: 1000, names: "a", delayMs: overflowMs},
		{ttlMs: 1000, names: "a", valueLen: MaxValueBytes + 1},
		{ttlMs: 1000, names: "", extra: MaxLocksPerAcquire},
		{ttlMs: 1000, names: "a", extra: MaxLocksPerAcquire},
		{ttlMs: 1000, names: "n/0", extra: 1},
	} {
		f.Add(s.ttlMs, s.owner, s.principal, s.names, s.mode, s.capacity, s.delayMs, s.valueLen, s.extra, s.try)
	}
	f.Fuzz(func(t *testing.T, ttlMs int64, owner, principal, names string, mode int32, capacity uint32, delayMs int64, valueLen uint16, extra uint8, try bool) {
		// Protobuf strings carry only UTF-8 (FuzzApply sends the rest as
		// raw bytes).
		owner = strings.ToValidUTF8(owner, "\uFFFD")
		principal = strings.ToValidUTF8(principal, "\uFFFD")
		names = strings.ToValidUTF8(names, "\uFFFD")

		tab := NewTable()
		var evs []Event
		tab.Observe(func(e []Event) { evs = append(evs, e...) })
		index := uint64(0)
		apply := func(c *statev1.Command) *Result {
			t.Helper()
			c.ProposedUnixNano = testNow
			before, err := tab.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			rev, n, queues := tab.Revision(), len(evs), queuesOf(tab)
			index++
			res := tab.Apply(index, 1, encode(c)).(*Result)
			if err := checkInvariants(tab); err != nil {
				t.Fatalf("after %v: %v", c, err)
			}
			if err := checkFairGrants(queues, evs[n:], queuesOf(tab)); err != nil {
				t.Fatalf("after %v: %v", c, err)
			}
			if res.Err != nil {
				if res.Err.Msg == "" {
					t.Fatalf("%v: error %v without a message", c, res.Err.Code)
				}
				after, _ := tab.Snapshot()
				if !bytes.Equal(before, after) || tab.Revision() != rev || len(evs) != n {
					t.Fatalf("%v failed (%v) but changed the table", c, res.Err)
				}
			} else if tab.Revision() == rev && !(res.Duplicate || res.Ignored || (try && !res.Granted)) {
				t.Fatalf("%v applied (%+v) without a revision", c, res)
			}
			return res
		}
		// The table: lease 1 holds "held" (capacity 1).
		other := apply(cmdGrant(time.Minute, "other"))
		if res := apply(cmdAcq(other.LeaseID, "held")); !res.Granted {
			t.Fatalf("setup: %+v", res)
		}

		// The lease.
		grant := cmdGrantMs(ttlMs)
		grant.GetGrantLease().Owner = owner
		grant.Principal = principal
		res := apply(grant)
		grantInvalid := ttlMs <= 0 || ttlMs > MaxTTL.Milliseconds() || len(owner) > MaxOwnerBytes || len(principal) > MaxOwnerBytes
		lease := res.LeaseID
		switch {
		case grantInvalid:
			if res.Err == nil || res.Err.Code != Invalid {
				t.Fatalf("grant of ttl %d ms, owner %d bytes, principal %d bytes: %+v, want Invalid", ttlMs, len(owner), len(principal), res)
			}
			// Acquire with a lease of no principal instead.
			principal = ""
			lease = apply(cmdGrant(time.Minute, "")).LeaseID
		case res.Err != nil || lease == 0 || lease != res.Revision:
			t.Fatalf("grant of ttl %d ms, owner %d bytes, principal %d bytes: %+v, want a lease", ttlMs, len(owner), len(principal), res)
		}
		if info, ok := tab.Lease(lease); !ok || (!grantInvalid && (info.TTL != time.Duration(ttlMs)*time.Millisecond || info.Owner != owner)) {
			t.Fatalf("lease %d: %+v", lease, info)
		}

		// The acquire.
		var list []string
		if names != "" {
			list = strings.Split(names, ",")
		}
		for i := range int(extra) {
			list = append(list, "n/"+itoa(i))
		}
		a := &statev1.Acquire{LeaseId: lease, Names: list, Mode: mode, Capacity: capacity, LockDelayMs: delayMs, Value: make([]byte, valueLen), Try: try}
		acq := cmdAcquire(a)
		acq.Principal = principal
		invalid := len(list) == 0 || len(list) > MaxLocksPerAcquire || mode < 0 || mode > 2 || capacity > MaxCapacity ||
			delayMs < 0 || delayMs > MaxLockDelay.Milliseconds() || int(valueLen) > MaxValueBytes
		seen := map[string]bool{}
		for _, n := range list {
			invalid = invalid || refValidName(n) != nil || seen[n]
			seen[n] = true
		}
		res = apply(acq)
		desc := fmt.Sprintf("acquire of %d names %.80q mode %d capacity %d delay %d ms value %d bytes try %v", len(list), list, mode, capacity, delayMs, valueLen, try)
		if invalid {
			if res.Err == nil || res.Err.Code != Invalid {
				t.Fatalf("%s: %+v, want Invalid", desc, res)
			}
			return
		}
		cp := max(capacity, 1)
		switch {
		case seen["held"] && cp != 1:
			if res.Err == nil || res.Err.Code != Conflict {
				t.Fatalf("%s: %+v, want a capacity Conflict", desc, res)
			}
		case res.Err != nil:
			t.Fatalf("%s: %+v, want it applied", desc, res)
		case seen["held"] && try:
			if res.Granted || res.WaiterID != 0 {
				t.Fatalf("%s: %+v, want busy", desc, res)
			}
		case seen["held"]:
			if res.Granted || res.WaiterID == 0 || res.Position != 1 {
				t.Fatalf("%s: %+v, want queued first", desc, res)
			}
		default:
			if !res.Granted || len(res.Tokens) != len(list) {
				t.Fatalf("%s: %+v, want granted", desc, res)
			}
			info, _ := tab.Lease(lease)
			if len(info.Held) != len(list) {
				t.Fatalf("%s: the lease holds %+v", desc, info.Held)
			}
		}
	})
}
