package server

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/lockd-io/lockd/locks"
	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

// directRaft applies proposals straight to a table, except that it loses
// (times out) the acquires of one principal, as a leader change would.
type directRaft struct {
	mu    sync.Mutex
	table *locks.Table
	index uint64
	lose  string
}

func (r *directRaft) Propose(ctx context.Context, data []byte) (any, error) {
	cmd := new(statev1.Command)
	if err := proto.Unmarshal(data, cmd); err != nil {
		return nil, err
	}
	if cmd.GetAcquire() != nil && cmd.GetPrincipal() == r.lose {
		return nil, context.DeadlineExceeded
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.index++
	return r.table.Apply(r.index, 1, data), nil
}

func (r *directRaft) ReadIndex(context.Context) error  { return nil }
func (r *directRaft) Leadership() (bool, uint64, bool) { return true, 1, true }
func (r *directRaft) LeaderURL() string                { return "" }

// An acquire whose outcome is unknown is cancelled by its request id. The
// cancel goes out as the acquire's caller: Bob, who names Alice's lease and
// guesses her request id, must not get Alice's grant released by it.
func TestCancelOfUnknownAcquireIsTheCallers(t *testing.T) {
	table := locks.NewTable()
	raft := &directRaft{table: table, lose: "bob"}
	s := New(Config{Raft: raft, Table: table, MinTTL: time.Second, ProposeTimeout: time.Second, Logger: zerolog.Nop()})
	defer s.Close()
	alice := context.WithValue(context.Background(), principalKey{}, &Principal{Name: "alice", Role: RoleClient})
	bob := context.WithValue(context.Background(), principalKey{}, &Principal{Name: "bob", Role: RoleClient})

	res, err := s.propose(alice, &statev1.Command{Op: &statev1.Command_GrantLease{GrantLease: &statev1.GrantLease{TtlMs: 10000}}})
	if err != nil {
		t.Fatal(err)
	}
	lease := res.LeaseID
	got, err := s.acquire(alice, &statev1.Acquire{LeaseId: lease, Names: []string{"a/x"}, RequestId: 1}, nil, nil)
	if err != nil || !got.Granted {
		t.Fatalf("alice's acquire: %+v %v", got, err)
	}
	if _, err := s.acquire(bob, &statev1.Acquire{LeaseId: lease, Names: []string{"a/y"}, RequestId: 1}, nil, nil); err == nil {
		t.Fatal("bob's lost acquire succeeded")
	}
	info, _, ok := table.Describe("a/x")
	if !ok || len(info.Holders) != 1 || info.Holders[0].LeaseID != lease {
		t.Fatalf("a/x after bob's cancelled acquire: %+v, want alice's lease %d holding it", info, lease)
	}
}
