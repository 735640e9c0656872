package server

import (
	"testing"

	"github.com/lockd-io/lockd/election"
	"github.com/lockd-io/lockd/locks"
	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	"google.golang.org/protobuf/proto"
)

// tableApply applies one command to a table and returns its result.
func tableApply(t *testing.T, tab *locks.Table, c *statev1.Command) *locks.Result {
	t.Helper()
	data, err := proto.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	res := tab.Apply(1, 1, data).(*locks.Result)
	if res.Err != nil {
		t.Fatalf("%v: %v", c, res.Err)
	}
	return res
}

// The leader log answers who led an election at any revision since it
// began: a queue change is no change, an election that did not exist yet
// had no leader, and one that left the table is forgotten only once the
// hub's history no longer reaches it.
func TestLeaderLog(t *testing.T) {
	tab := locks.NewTable()
	grant := &statev1.Command{Op: &statev1.Command_GrantLease{GrantLease: &statev1.GrantLease{TtlMs: 60000}}}
	a := tableApply(t, tab, grant).LeaseID
	b := tableApply(t, tab, grant).LeaseID
	// An election that exists before the log starts is entered with its
	// leader.
	old := tableApply(t, tab, &statev1.Command{Op: &statev1.Command_Acquire{Acquire: election.Campaign("old", a, 1, []byte("o"))}})
	l := newLeaderLog(tab)
	var oldest uint64 // as the hub would say: it keeps everything here
	tab.Observe(func(events []locks.Event) {
		if oldest == 0 {
			oldest = events[0].Revision
		}
		l.observe(events, tab, oldest)
	})
	if got, ok := l.at(election.LockName("old"), tab.Revision()); !ok || got.GetTerm() != old.Tokens[0] {
		t.Fatalf("the election from before the log: %v %v", got, ok)
	}
	if _, ok := l.at(election.LockName("old"), tab.Revision()-1); ok {
		t.Fatal("the log answered for a revision before it began")
	}

	name := election.LockName("db")
	before := tab.Revision()
	ca := tableApply(t, tab, &statev1.Command{Op: &statev1.Command_Acquire{Acquire: election.Campaign("db", a, 2, []byte("a"))}})
	cb := tableApply(t, tab, &statev1.Command{Op: &statev1.Command_Acquire{Acquire: election.Campaign("db", b, 3, []byte("b"))}}) // queues
	rel := tableApply(t, tab, &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{Name: name, LeaseId: a, Token: ca.Tokens[0]}}})
	end := tableApply(t, tab, &statev1.Command{Op: &statev1.Command_RevokeLease{RevokeLease: &statev1.RevokeLease{LeaseId: b}}})
	for _, tc := range []struct {
		what  string
		rev   uint64
		lease uint64 // 0: no leader
	}{
		{"before the election existed", before, 0},
		{"a's term", ca.Tokens[0], a},
		{"b queued behind a", cb.Revision, a},
		{"handed over to b", rel.Revision, b},
		{"gone with b's lease", end.Revision, 0},
	} {
		got, ok := l.at(name, tc.rev)
		if !ok || got.GetLeaseId() != tc.lease {
			t.Errorf("%s (revision %d): leader %v (known %v), want lease %d", tc.what, tc.rev, got, ok, tc.lease)
		}
	}
	// Once the hub's history has moved past its end, the election is
	// forgotten, and reads as having no leader.
	oldest = end.Revision + 1
	tableApply(t, tab, &statev1.Command{Op: &statev1.Command_Acquire{Acquire: election.Campaign("other", a, 4, nil)}})
	if _, kept := l.byName[name]; kept {
		t.Fatal("a gone election's log outlived the hub's history")
	}
}
