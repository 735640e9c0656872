package server

import (
	"context"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/lockd-io/lockd/locks"
	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

// soloRaft is a log of one member that this test makes lead or not, with or
// without recent contact with a quorum; proposals are applied to a real
// table and then recorded.
type soloRaft struct {
	tab *locks.Table

	mu             sync.Mutex
	leader, quorum bool
	term           uint64
	proposed       chan *statev1.Command
}

func (r *soloRaft) Propose(ctx context.Context, cmd []byte) (any, error) {
	c := new(statev1.Command)
	if err := proto.Unmarshal(cmd, c); err != nil {
		return nil, err
	}
	r.mu.Lock()
	term := r.term
	r.mu.Unlock()
	// Applied before it is reported, as a node answers a proposal only
	// once it is applied: the test looks at the table when it hears.
	res := r.tab.Apply(1, term, cmd)
	r.proposed <- c
	return res, nil
}

func (r *soloRaft) ReadIndex(context.Context) error { return nil }
func (r *soloRaft) LeaderURL() string               { return "" }
func (r *soloRaft) Leadership() (bool, uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.leader, r.term, r.quorum
}

func (r *soloRaft) set(leader bool, term uint64, quorum bool) {
	r.mu.Lock()
	r.leader, r.term, r.quorum = leader, term, quorum
	r.mu.Unlock()
}

// A leader expires a lease only while it has seen a quorum lately, stamps
// the expiry with its term, and a new leader gives every lease a full TTL
// before it expires anything.
func TestKeeperExpiresOnlyWithQuorum(t *testing.T) {
	tab := locks.NewTable()
	r := &soloRaft{tab: tab, proposed: make(chan *statev1.Command, 16)}
	k := newKeeper(r, tab, time.Hour, zerolog.Nop())
	tab.Observe(k.observe)
	grant := func(ttl time.Duration) uint64 {
		data, _ := proto.Marshal(&statev1.Command{Op: &statev1.Command_GrantLease{GrantLease: &statev1.GrantLease{TtlMs: ttl.Milliseconds()}}})
		return tab.Apply(1, 1, data).(*locks.Result).LeaseID
	}
	expiring := func() map[uint64]bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		return maps.Clone(k.expiring)
	}
	ctx := context.Background()

	short := grant(30 * time.Millisecond)
	grant(time.Hour)
	r.set(true, 2, false)
	k.step(ctx) // takes office: every deadline starts now
	time.Sleep(60 * time.Millisecond)
	k.step(ctx)
	if e := expiring(); len(e) != 0 {
		t.Fatalf("a leader without a quorum decided to expire %v", e)
	}
	select {
	case c := <-r.proposed:
		t.Fatalf("a leader without a quorum proposed %v", c)
	default:
	}
	r.set(true, 2, true)
	k.step(ctx)
	// (The keeper's expiring set is not looked at here: the proposal it
	// starts may already have been applied, and the lease forgotten.)
	select {
	case c := <-r.proposed:
		if x := c.GetExpireLease(); x.GetLeaseId() != short || x.GetTerm() != 2 {
			t.Fatalf("proposed %v, want the expiry of lease %d in term 2", c, short)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no expiry proposed")
	}
	if _, ok := tab.Lease(short); ok {
		t.Fatal("the expired lease is still in the table")
	}

	// A lease whose TTL has passed under this leader, without an expiry
	// (the leader lost its quorum), gets a full TTL from the next leader.
	late := grant(30 * time.Millisecond)
	r.set(true, 2, false)
	time.Sleep(60 * time.Millisecond)
	k.step(ctx)
	r.set(true, 3, true) // a new term: this node leads again, afresh
	k.step(ctx)
	if e := expiring(); len(e) != 0 {
		t.Fatalf("a new leader expired %v at once; lease %d was due a full TTL", e, late)
	}
	select {
	case c := <-r.proposed:
		t.Fatalf("a new leader proposed %v at once; lease %d was due a full TTL", c, late)
	default:
	}
	time.Sleep(60 * time.Millisecond)
	k.step(ctx)
	select {
	case c := <-r.proposed:
		if x := c.GetExpireLease(); x.GetLeaseId() != late || x.GetTerm() != 3 {
			t.Fatalf("proposed %v, want the expiry of lease %d in term 3", c, late)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no expiry of lease %d after the new leader's full TTL", late)
	}
}
