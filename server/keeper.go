package server

import (
	"context"
	"sync"
	"time"

	"github.com/lockd-io/lockd/locks"
	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

// keeper is the leader's half of leases and lock-delays: it tracks lease
// deadlines on this node's monotonic clock, answers keep-alives without
// touching the raft log, and proposes the expiry of leases whose deadline
// passed and the end of lock-delays that ran out.
//
// Its guarantees, which the docs repeat: a lease never expires before TTL
// after the last keep-alive a leader acknowledged, because a keep-alive is
// acknowledged only once a quorum confirms this node still leads (see
// keepAlive), a new leader restarts every deadline at now+TTL before it
// expires anything, a lease whose expiry is decided is never revived, an
// expiry is proposed only while the leader has seen a quorum recently, and
// an expiry proposed in an old term is ignored at apply. It expires at most
// TTL plus one failover (election timeout and a tick) after the last
// keep-alive.
type keeper struct {
	raft  Raft
	table *locks.Table
	log   zerolog.Logger
	tick  time.Duration

	mu        sync.Mutex
	term      uint64 // the term the deadlines were set up in; 0 when not leading
	deadlines *locks.Deadlines
	delays    map[string]delayEnd // lock name → when its delay ends
	inflight  map[uint64]bool     // leases whose expiry is being proposed
	expiring  map[uint64]bool     // leases this leader decided to expire; no keep-alive revives them
	ending    map[string]bool     // locks whose delay end is being proposed
}

type delayEnd struct {
	rev uint64
	at  time.Time
}

func newKeeper(r Raft, t *locks.Table, tick time.Duration, log zerolog.Logger) *keeper {
	return &keeper{raft: r, table: t, tick: tick, log: log, deadlines: locks.NewDeadlines(),
		delays: map[string]delayEnd{}, inflight: map[uint64]bool{}, expiring: map[uint64]bool{}, ending: map[string]bool{}}
}

// run drives expiries until ctx ends.
func (k *keeper) run(ctx context.Context) {
	t := time.NewTicker(k.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			k.step(ctx)
		}
	}
}

// sync makes the keeper's state follow this node's leadership and reports
// whether it leads now.
func (k *keeper) syncLocked(now time.Time) (leader bool, term uint64, quorum bool) {
	leader, term, quorum = k.raft.Leadership()
	switch {
	case !leader:
		if k.term != 0 {
			k.term = 0
			k.deadlines.Reset(nil, now)
			clear(k.delays)
			clear(k.expiring)
		}
	case k.term != term:
		// Taking office: every lease gets a full TTL from now, every delay
		// its full length, whatever the previous leader had counted.
		k.term = term
		k.deadlines.Reset(k.table.LeaseTTLs(), now)
		clear(k.delays)
		clear(k.expiring)
		for _, d := range k.table.DelayedLocks() {
			k.delays[d.Name] = delayEnd{rev: d.DelayRevision, at: now.Add(d.Delay)}
		}
		k.log.Info().Uint64("term", term).Int("leases", k.deadlines.Len()).Int("delays", len(k.delays)).Msg("leading: lease deadlines restarted")
	}
	return leader, term, quorum
}

func (k *keeper) step(ctx context.Context) {
	now := time.Now()
	k.mu.Lock()
	leader, term, quorum := k.syncLocked(now)
	if !leader || !quorum {
		k.mu.Unlock()
		return
	}
	var expire []uint64
	for _, id := range k.deadlines.Expired(now, 1024) {
		k.expiring[id] = true
		if !k.inflight[id] {
			k.inflight[id] = true
			expire = append(expire, id)
		}
	}
	var ends []*statev1.EndDelay
	for name, d := range k.delays {
		if !d.at.After(now) && !k.ending[name] {
			k.ending[name] = true
			ends = append(ends, &statev1.EndDelay{Name: name, DelayRevision: d.rev})
		}
	}
	k.mu.Unlock()
	for _, id := range expire {
		go k.propose(ctx, &statev1.Command{Op: &statev1.Command_ExpireLease{ExpireLease: &statev1.ExpireLease{LeaseId: id, Term: term}}}, func() {
			k.mu.Lock()
			delete(k.inflight, id)
			k.mu.Unlock()
		})
	}
	for _, e := range ends {
		go k.propose(ctx, &statev1.Command{Op: &statev1.Command_EndDelay{EndDelay: e}}, func() {
			k.mu.Lock()
			delete(k.ending, e.GetName())
			k.mu.Unlock()
		})
	}
}

func (k *keeper) propose(ctx context.Context, cmd *statev1.Command, done func()) {
	defer done()
	cmd.ProposedUnixNano = time.Now().UnixNano()
	data, err := proto.Marshal(cmd)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := k.raft.Propose(ctx, data); err != nil {
		k.log.Debug().Err(err).Msg("leader proposal failed; retrying on a later tick")
	}
}

// observe follows the table's events: new leases get a deadline, ended
// ones are forgotten, delays are scheduled.
func (k *keeper) observe(events []locks.Event) {
	now := time.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.term == 0 {
		return // not leading; a new leader reads the table when it starts
	}
	for _, e := range events {
		switch e.Type {
		case locks.LeaseGranted:
			ttl := e.TTL
			if bugEarlyExpiry {
				ttl /= 4
			}
			k.deadlines.Add(e.LeaseID, ttl, now)
		case locks.LeaseEnded:
			k.deadlines.Remove(e.LeaseID)
			delete(k.expiring, e.LeaseID)
		case locks.Delayed:
			k.delays[e.Name] = delayEnd{rev: e.DelayRevision, at: now.Add(e.Delay)}
		case locks.DelayEnded:
			delete(k.delays, e.Name)
		}
	}
}

// keepAlive restarts a lease's deadline. leader is false if this node does
// not lead (the caller forwards the keep-alive); found is false for a lease
// that does not exist or whose expiry this leader has already decided.
//
// Before it answers, it confirms with a quorum (ReadIndex) that this node
// still leads in the term it led in when the keep-alive arrived. No later
// leader can then have been elected before the confirmation, so any later
// leader restarts the lease's deadline after the keep-alive arrived: the
// lease cannot expire earlier than TTL after it, even if this leader is
// deposed a moment later. ReadIndex also makes this node apply everything
// committed before, such as an expiry a previous leader decided.
func (k *keeper) keepAlive(ctx context.Context, id uint64) (ttl time.Duration, leader, found bool, err error) {
	ttls, leader, err := k.keepAliveMany(ctx, []uint64{id})
	if err != nil || !leader {
		return 0, leader, false, err
	}
	return ttls[0], true, ttls[0] > 0, nil
}

// keepAliveMany is keepAlive for many leases, with one quorum check: ttls[i]
// is the TTL of ids[i], 0 if it was not found.
func (k *keeper) keepAliveMany(ctx context.Context, ids []uint64) (ttls []time.Duration, leader bool, err error) {
	now := time.Now()
	k.mu.Lock()
	leader, term, _ := k.syncLocked(now)
	k.mu.Unlock()
	if !leader {
		return nil, false, nil
	}
	if err := k.raft.ReadIndex(ctx); err != nil {
		return nil, true, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if still, t, _ := k.syncLocked(time.Now()); !still || t != term {
		return nil, false, nil
	}
	ttls = make([]time.Duration, len(ids))
	for i, id := range ids {
		if k.expiring[id] {
			continue
		}
		if ttl, ok := k.deadlines.KeepAlive(id, now); ok {
			ttls[i] = ttl
			continue
		}
		if info, ok := k.table.Lease(id); ok {
			k.deadlines.Add(id, info.TTL, now)
			ttls[i] = info.TTL
		}
	}
	return ttls, true, nil
}

// remaining is how long a lease has left on this leader's clock.
func (k *keeper) remaining(id uint64) (time.Duration, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.term == 0 {
		return 0, false
	}
	return k.deadlines.Remaining(id, time.Now())
}
