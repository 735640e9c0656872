package locks

import (
	"testing"
	"time"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	"google.golang.org/protobuf/proto"
)

// as stamps a command with the principal that proposes it.
func as(principal string, admin bool, c *statev1.Command) *statev1.Command {
	c.Principal, c.Admin = principal, admin
	return c
}

func TestLeaseBelongsToItsPrincipal(t *testing.T) {
	h := newHarness(t)
	a := h.ok(h.apply(as("alice", false, cmdGrant(5*time.Second, "svc")))).LeaseID
	b := h.ok(h.apply(as("bob", false, cmdGrant(5*time.Second, "svc")))).LeaseID
	if info, _ := h.tab.Lease(a); info.Principal != "alice" {
		t.Fatalf("lease principal %q, want alice", info.Principal)
	}
	tok := h.ok(h.apply(as("alice", false, cmdAcq(a, "x")))).Tokens[0]
	w := h.ok(h.apply(as("bob", false, cmdAcq(b, "x")))).WaiterID

	// Bob may not use Alice's lease, in any command, and a refusal changes
	// nothing.
	for what, c := range map[string]*statev1.Command{
		"acquire":   cmdAcq(a, "y"),
		"release":   cmdRelease(a, "x", tok),
		"revoke":    cmdRevoke(a),
		"set value": cmdSetValue(a, "x", tok, "v"),
		"cancel":    cmdCancel(a, 0),
	} {
		h.unchanged("bob's "+what+" with alice's lease", func() {
			h.fails(h.apply(as("bob", false, c)), Denied)
		})
	}
	// Nor can he read Alice's de-duplicated results by replaying her
	// request id.
	h.ok(h.apply(as("alice", false, cmdAcquire(&statev1.Acquire{LeaseId: a, Names: []string{"z"}, RequestId: 9}))))
	h.unchanged("bob replaying alice's request", func() {
		h.fails(h.apply(as("bob", false, cmdAcquire(&statev1.Acquire{LeaseId: a, Names: []string{"z"}, RequestId: 9}))), Denied)
	})

	// An admin may use any lease; so may a cluster without authentication.
	h.ok(h.apply(as("ops", true, cmdCancel(b, w))))
	h.ok(h.apply(as("", false, cmdRelease(a, "x", tok))))
	h.ok(h.apply(as("ops", true, cmdRevoke(a))))
	// The events say who caused them, for the audit log.
	if len(h.last) == 0 {
		t.Fatal("a revoke emitted no events")
	}
	for _, e := range h.last {
		if e.By != "ops" {
			t.Fatalf("event %+v of ops's revoke is by %q", e, e.By)
		}
	}
	h.ok(h.apply(as("bob", false, cmdRevoke(b))))
	h.ok(h.apply(cmdExpire(h.lease(), 1)))
	for _, e := range h.last {
		if e.By != "" {
			t.Fatalf("an expiry's event %+v is by %q", e, e.By)
		}
	}
}

func TestPrincipalSurvivesSnapshot(t *testing.T) {
	h := newHarness(t)
	h.ok(h.apply(as("alice", false, cmdGrant(5*time.Second, ""))))
	restored := NewTable()
	if err := restored.Restore(h.snap()); err != nil {
		t.Fatal(err)
	}
	if p, ok := restored.LeasePrincipal(1); !ok || p != "alice" {
		t.Fatalf("restored principal %q, %v", p, ok)
	}
	data, _ := proto.Marshal(as("bob", false, cmdRevoke(1)))
	if res := restored.Apply(100, 1, data).(*Result); res.Err == nil || res.Err.Code != Denied {
		t.Fatalf("bob revoked alice's lease after a restore: %+v", res)
	}
}

func TestPrincipalIsBounded(t *testing.T) {
	h := newHarness(t)
	h.lease()
	long := string(make([]byte, MaxOwnerBytes+1))
	h.unchanged("a grant with a huge principal", func() {
		h.fails(h.apply(as(long, false, cmdGrant(5*time.Second, ""))), Invalid)
	})
}

// One token may hold MaxLeasesPerPrincipal leases; others are not affected,
// a lease that ends makes room, and the count survives a snapshot.
func TestLeasesPerPrincipal(t *testing.T) {
	h := newHarness(t)
	var first uint64
	for i := range MaxLeasesPerPrincipal {
		r := h.raw(encode(as("alice", false, cmdGrant(time.Minute, ""))))
		if r.Err != nil {
			t.Fatalf("lease %d of alice: %v", i, r.Err)
		}
		if i == 0 {
			first = r.LeaseID
		}
	}
	h.unchanged("alice over her limit", func() { h.fails(h.apply(as("alice", false, cmdGrant(time.Minute, ""))), Quota) })
	h.ok(h.apply(as("bob", false, cmdGrant(time.Minute, ""))))
	h.ok(h.apply(as("", false, cmdGrant(time.Minute, "")))) // no token: only the table's limit

	// Restored from a snapshot, the table still counts alice's leases.
	data, err := h.tab.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	restored := NewTable()
	if err := restored.Restore(data); err != nil {
		t.Fatal(err)
	}
	h.tab = restored
	h.unchanged("alice over her limit, restored", func() { h.fails(h.apply(as("alice", false, cmdGrant(time.Minute, ""))), Quota) })
	h.ok(h.apply(as("alice", false, cmdRevoke(first))))
	h.ok(h.apply(as("alice", false, cmdGrant(time.Minute, ""))))
}
