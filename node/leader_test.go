package node

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A request that reaches a node while the cluster elects a new leader is
// served once there is one, instead of failing with ErrNoLeader.
func TestRequestsWaitOutAnElection(t *testing.T) {
	c := newTestCluster(t, 3, nil, nil)
	l := c.waitLeader(5 * time.Second)
	f := c.follower(l).current()
	dead := l.current().ID()
	c.crash(l)
	// Wait until the follower has let the dead leader go. It may have a new
	// leader already: the election can end within a millisecond on
	// loopback, faster than this loop looks.
	deadline := time.Now().Add(10 * time.Second)
	for f.Leader() == dead {
		if time.Now().After(deadline) {
			t.Fatal("the follower still follows its dead leader after 10s")
		}
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	readc := make(chan error, 1)
	go func() { readc <- f.ReadIndex(ctx) }()
	if err := propose(ctx, f, 1); err != nil {
		t.Fatalf("a proposal made during the election: %v", err)
	}
	if err := <-readc; err != nil {
		t.Fatalf("a read made during the election: %v", err)
	}
	if f.Leader() == 0 {
		t.Fatal("served without a leader")
	}
}

// A node cut off from a quorum does not hold requests beyond the time an
// election takes: once that has passed without a leader, it answers
// ErrNoLeader at once, so that clients go to another node.
func TestCutOffNodeFailsFast(t *testing.T) {
	faults := newNetFaults(1)
	const et = time.Second
	c := newTestCluster(t, 3, faults, func(cfg *Config) {
		cfg.HeartbeatInterval, cfg.ElectionTimeout = 100*time.Millisecond, et
	})
	l := c.waitLeader(10 * time.Second)
	f := c.follower(l).current()
	faults.isolate([]uint64{f.ID()}, c.ids)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The first request may wait for the election the node tries to hold;
	// it must end with ErrNoLeader, not at the caller's deadline.
	for f.Leader() != 0 {
		if err := ctx.Err(); err != nil {
			t.Fatal("the isolated follower never lost its leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := propose(ctx, f, 1); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("a proposal on a cut-off node: %v, want ErrNoLeader", err)
	}
	start := time.Now()
	if err := propose(ctx, f, 2); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("a second proposal on a cut-off node: %v, want ErrNoLeader", err)
	}
	if err := f.ReadIndex(ctx); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("a read on a cut-off node: %v, want ErrNoLeader", err)
	}
	if took := time.Since(start); took > et {
		t.Fatalf("a cut-off node took %v to refuse, longer than an election timeout", took)
	}
	faults.heal()
	c.waitLeader(10 * time.Second)
	if err := propose(ctx, f, 3); err != nil {
		t.Fatalf("a proposal after the partition healed: %v", err)
	}
}

// When the leader's process is gone (its port refuses connections), the
// followers elect a new leader well within an election timeout, rather
// than after one.
func TestDeadLeaderIsReplacedEarly(t *testing.T) {
	const et = 2 * time.Second
	c := newTestCluster(t, 3, nil, func(cfg *Config) {
		cfg.HeartbeatInterval, cfg.ElectionTimeout = 100*time.Millisecond, et
	})
	l := c.waitLeader(20 * time.Second)
	// Let the followers open their streams to the leader.
	if err := propose(context.Background(), l.current(), 1); err != nil {
		t.Fatal(err)
	}
	old := l.current().ID()
	l.srv.Close() // the port now refuses, as a killed process's would
	c.crash(l)
	start := time.Now()
	for {
		nl := c.leader()
		if nl != nil && nl.current().ID() != old {
			break
		}
		if time.Since(start) > 2*et {
			t.Fatalf("no new leader %v after the old one's process went", 2*et)
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	t.Logf("new leader after %v (election timeout %v)", took, et)
	// Without the early election, raft's randomized timeout alone takes at
	// least one election timeout less one heartbeat.
	if took > et/2 {
		t.Errorf("a new leader took %v, more than half the election timeout", took)
	}
}
