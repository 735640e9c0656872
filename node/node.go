package node

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	peerv1 "github.com/lockd-io/lockd/proto/lockd/peer/v1"
	"github.com/lockd-io/lockd/store"
	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"
)

// Errors a Node returns to its callers.
var (
	// ErrStopped: the node was stopped before the request finished.
	ErrStopped = errors.New("node: stopped")
	// ErrNoLeader: the cluster has no leader this node knows of, so the
	// request could not be started. It had no effect; retry later.
	ErrNoLeader = errors.New("node: no leader")
	// ErrReadTimeout: a linearizable read could not be confirmed by a quorum
	// within an election timeout.
	ErrReadTimeout = errors.New("node: read index not confirmed in time")
	// ErrLeaderChanged: the leader a proposal went to lost its leadership
	// (or died) before the proposal was applied here. The proposal may or
	// may not be applied later: its outcome is unknown.
	ErrLeaderChanged = errors.New("node: the leader changed before the proposal was applied; its outcome is unknown")
)

// Store meta keys.
const (
	metaName    = "name"
	metaCluster = "cluster-id"
)

// Node is one running member of a cluster.
type Node struct {
	cfg     Config
	id      uint64
	cluster uint64
	log     zerolog.Logger
	store   *store.Store
	sm      StateMachine
	tr      *transport
	metrics *metrics

	propc chan proposal
	recvc chan *raftpb.Message
	readc chan *readWaiter
	funcc chan func(*raft.RawNode)
	stopc chan struct{}
	donec chan struct{}
	stop  sync.Once

	removed     chan struct{} // closed once this node is removed from the cluster
	removedOnce sync.Once

	waitMu  sync.Mutex
	waiters map[uint64]*waiter
	nextID  atomic.Uint64

	apply  applier
	append appender

	// Published by the loop for lock-free readers.
	leader     atomic.Uint64
	term       atomic.Uint64
	commit     atomic.Uint64
	applied    atomic.Uint64
	snapIndex  atomic.Uint64
	quorumSeen atomic.Int64 // monotonic ns (since start) a leader last saw a quorum active
	// leaderHeard is when (monotonic ns since start) a message last came
	// from the leader this node knows, or that leader became known.
	leaderHeard atomic.Int64
	started     time.Time
	lead        leaderWatch
	peerURL     sync.Map // id → url of every member, for LeaderURL

	// Owned by the raft loop.
	rn        *raft.RawNode
	confState *raftpb.ConfState
	members   map[uint64]*peerv1.Member
	reads     readQueue
	lastLead  uint64
	// hastened is the term in which this node last ran its election clock
	// ahead because its leader's process was gone (see leaderGone).
	hastened uint64
}

// waiter is a proposal waiting for its entry to be applied.
type waiter struct {
	ch chan result
	// leader is the leader the proposal was handed to (this node, or the
	// one raft forwarded it to), once proposed: when that leader goes, the
	// proposal fails at once with ErrLeaderChanged instead of waiting out
	// its timeout, since a forwarded proposal that a dead leader never
	// appended is lost without a word.
	leader   uint64
	proposed bool
}

type proposal struct {
	id   uint64
	data []byte // id followed by the command
}

type result struct {
	val any
	err error
}

// Start opens the node on its store: it restores the newest snapshot,
// bootstraps a new cluster if the store is empty, and starts the raft loop.
// Committed entries the snapshot lacks are applied by the loop before it
// answers any request.
func Start(cfg Config) (*Node, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:     cfg,
		id:      MemberID(cfg.Name),
		log:     cfg.Logger,
		store:   cfg.Store,
		sm:      cfg.StateMachine,
		propc:   make(chan proposal, 4096),
		recvc:   make(chan *raftpb.Message, 4096),
		readc:   make(chan *readWaiter, 4096),
		funcc:   make(chan func(*raft.RawNode)),
		stopc:   make(chan struct{}),
		donec:   make(chan struct{}),
		removed: make(chan struct{}),
		waiters: map[uint64]*waiter{},
		members: map[uint64]*peerv1.Member{},
		started: time.Now(),
	}
	n.lead.init(n.started)
	n.apply.init()
	n.metrics = newMetrics(n, cfg.Metrics)
	var seed [8]byte
	rand.Read(seed[:])
	// Proposal ids start at a random point so that entries proposed by an
	// earlier incarnation of this node never answer a waiter of this one.
	n.nextID.Store(binary.BigEndian.Uint64(seed[:]) >> 1)
	// Read-index request ids likewise: a leader's late answer to a request
	// of an earlier incarnation must not confirm a read of this one.
	rand.Read(seed[:])
	n.reads.nextID = binary.BigEndian.Uint64(seed[:]) >> 1

	last, err := n.store.LastIndex()
	if err != nil {
		return nil, err
	}
	snap, err := n.store.Snapshot()
	if err != nil {
		return nil, err
	}
	fresh := last == 0 && raft.IsEmptySnap(snap)
	if err := n.checkIdentity(fresh); err != nil {
		return nil, err
	}
	hs, cs, err := n.store.InitialState()
	if err != nil {
		return nil, err
	}
	n.confState = cs
	n.append.init(hs)
	n.term.Store(hs.GetTerm())
	n.commit.Store(hs.GetCommit())
	var applied uint64
	if !raft.IsEmptySnap(snap) {
		if err := n.restore(snap); err != nil {
			return nil, fmt.Errorf("node: restoring snapshot at %d: %w", snap.GetMetadata().GetIndex(), err)
		}
		applied = n.snapIndex.Load()
	}
	if cfg.bugs.replayFromLogStart {
		applied = 0
	}
	rc := &raft.Config{
		ID:                        n.id,
		ElectionTick:              cfg.electionTicks(),
		HeartbeatTick:             1,
		Storage:                   n.store,
		Applied:                   applied,
		MaxSizePerMsg:             1 << 20,
		MaxCommittedSizePerReady:  8 << 20,
		MaxUncommittedEntriesSize: 256 << 20,
		MaxInflightMsgs:           256,
		AsyncStorageWrites:        true,
		CheckQuorum:               true,
		PreVote:                   true,
		ReadOnlyOption:            raft.ReadOnlySafe,
		StepDownOnRemoval:         true,
		Logger:                    raftLogger{n.log.With().Str("component", "raft").Logger()},
	}
	n.rn, err = raft.NewRawNode(rc)
	if err != nil {
		return nil, err
	}
	n.tr = newTransport(n.id, n.cluster, cfg.Faults, cfg.PeerTLS, 2*cfg.ElectionTimeout, n.log.With().Str("component", "transport").Logger())
	n.tr.deliver = n.deliver
	n.tr.unreachable = func(id uint64) { n.runAsync(func(rn *raft.RawNode) { rn.ReportUnreachable(id) }) }
	n.tr.gone = func(id uint64) { n.runAsync(func(*raft.RawNode) { n.leaderGone(id) }) }
	n.tr.snapshotted = func(id uint64, st raft.SnapshotStatus) {
		n.runAsync(func(rn *raft.RawNode) { rn.ReportSnapshot(id, st) })
	}
	// Static cluster URLs are a starting point for reaching peers; the
	// replicated member table overrides them as the log is applied.
	for _, p := range cfg.InitialCluster {
		n.setPeerURL(MemberID(p.Name), p.URL)
	}
	for id, m := range n.members {
		n.setPeerURL(id, m.GetUrl())
	}
	if fresh && !cfg.Join {
		peers := make([]raft.Peer, 0, len(cfg.InitialCluster))
		for _, p := range cfg.InitialCluster {
			ctx, err := proto.Marshal(&peerv1.Member{Id: MemberID(p.Name), Name: p.Name, Url: p.URL})
			if err != nil {
				return nil, err
			}
			peers = append(peers, raft.Peer{ID: MemberID(p.Name), Context: ctx})
		}
		if err := n.rn.Bootstrap(peers); err != nil {
			return nil, err
		}
	}
	n.applied.Store(applied)
	n.apply.conf, n.apply.members = n.confState, membersOf(n.members)
	n.quorumSeen.Store(-int64(cfg.ElectionTimeout)) // no quorum seen yet
	n.log.Info().Str("id", strconv.FormatUint(n.id, 16)).Str("cluster", strconv.FormatUint(n.cluster, 16)).
		Bool("bootstrap", fresh).Uint64("snapshot", n.snapIndex.Load()).Uint64("last-index", last).Msg("starting raft node")
	go n.applyLoop()
	go n.appendLoop()
	go n.run()
	return n, nil
}

// checkIdentity makes sure a data dir is only ever used by the member it was
// created for, and records the cluster id.
func (n *Node) checkIdentity(fresh bool) error {
	name, err := n.store.GetMeta(metaName)
	if err != nil {
		return err
	}
	if name != nil && string(name) != n.cfg.Name {
		return fmt.Errorf("node: data dir belongs to member %q, not %q", name, n.cfg.Name)
	}
	if fresh {
		if len(n.cfg.InitialCluster) == 0 {
			return errors.New("node: the data dir is empty and no initial cluster was given")
		}
		n.cluster = clusterID(n.cfg.InitialCluster)
		if n.cfg.Join {
			n.cluster = n.cfg.ClusterID
		}
		if err := n.store.SetMeta(metaName, []byte(n.cfg.Name)); err != nil {
			return err
		}
		return n.store.SetMeta(metaCluster, []byte(strconv.FormatUint(n.cluster, 16)))
	}
	raw, err := n.store.GetMeta(metaCluster)
	if err != nil {
		return err
	}
	if n.cluster, err = strconv.ParseUint(string(raw), 16, 64); err != nil {
		return fmt.Errorf("node: data dir has no valid cluster id (%q)", raw)
	}
	return nil
}

// ID is this member's raft id.
func (n *Node) ID() uint64 { return n.id }

// Leader is the raft id of the leader this node knows of, 0 if none.
func (n *Node) Leader() uint64 { return n.leader.Load() }

// LeaderURL is the URL of the leader this node knows of, "" if none.
func (n *Node) LeaderURL() string {
	if u, ok := n.peerURL.Load(n.leader.Load()); ok {
		return u.(string)
	}
	return ""
}

// Applied is the index of the last entry applied to the state machine.
func (n *Node) Applied() uint64 { return n.applied.Load() }

// PeerHandler serves the peer endpoints; mount it at PeerPathPrefix.
func (n *Node) PeerHandler() *transport { return n.tr }

// Stop stops the raft loop and the transport. Waiting requests fail with
// ErrStopped. It does not close the store.
func (n *Node) Stop() {
	n.stop.Do(func() {
		close(n.stopc)
		<-n.donec
		n.tr.close()
	})
}

// Done is closed when the node has stopped.
func (n *Node) Done() <-chan struct{} { return n.donec }

// Propose replicates cmd and returns the state machine's result once the
// command is applied on this node. A proposal that finds no leader waits
// out an election under way (see awaitLeader) rather than failing at once.
// An error other than ErrNoLeader leaves it unknown whether the command was
// applied: callers that retry must make their commands idempotent.
func (n *Node) Propose(ctx context.Context, cmd []byte) (any, error) {
	start := time.Now()
	for {
		val, err := n.proposeOnce(ctx, cmd)
		if errors.Is(err, ErrNoLeader) && n.awaitLeader(ctx) {
			continue // not proposed: try again under the new leader
		}
		if err == nil {
			n.metrics.proposal.Observe(since(start))
		}
		return val, err
	}
}

// proposeOnce hands cmd to raft under a fresh proposal id and waits for
// its result.
func (n *Node) proposeOnce(ctx context.Context, cmd []byte) (any, error) {
	id := n.nextID.Add(1)
	data := make([]byte, 8+len(cmd))
	binary.BigEndian.PutUint64(data, id)
	copy(data[8:], cmd)
	ch := make(chan result, 1)
	n.waitMu.Lock()
	n.waiters[id] = &waiter{ch: ch}
	n.waitMu.Unlock()
	defer func() {
		n.waitMu.Lock()
		delete(n.waiters, id)
		n.waitMu.Unlock()
	}()
	select {
	case n.propc <- proposal{id: id, data: data}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-n.donec:
		return nil, ErrStopped
	}
	select {
	case r := <-ch:
		return r.val, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-n.donec:
		return nil, ErrStopped
	}
}

// inFlight is how many proposals wait for their entries to be applied.
func (n *Node) inFlight() int {
	n.waitMu.Lock()
	defer n.waitMu.Unlock()
	return len(n.waiters)
}

func (n *Node) finish(id uint64, val any, err error) {
	n.waitMu.Lock()
	w, ok := n.waiters[id]
	n.waitMu.Unlock()
	if ok {
		w.answer(result{val, err})
	}
}

func (w *waiter) answer(r result) {
	select {
	case w.ch <- r:
	default: // already answered
	}
}

// deliver hands a peer message to the raft loop, blocking (and so pushing
// back on the sender's stream) while the loop is busy.
func (n *Node) deliver(ctx context.Context, m *raftpb.Message) error {
	select {
	case n.recvc <- m:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.donec:
		return ErrStopped
	}
}

// runAsync runs f on the raft loop without waiting for it.
func (n *Node) runAsync(f func(*raft.RawNode)) {
	go func() {
		select {
		case n.funcc <- f:
		case <-n.donec:
		}
	}()
}

// do runs f on the raft loop and waits for it.
func (n *Node) do(ctx context.Context, f func(*raft.RawNode)) error {
	done := make(chan struct{})
	select {
	case n.funcc <- func(rn *raft.RawNode) { f(rn); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	case <-n.donec:
		return ErrStopped
	}
	select {
	case <-done:
		return nil
	case <-n.donec:
		return ErrStopped
	}
}

func (n *Node) run() {
	defer close(n.donec)
	defer n.failAll()
	defer n.apply.stop() // before failAll: no apply answers a waiter after it
	defer n.append.stop()
	ticker := time.NewTicker(n.cfg.HeartbeatInterval)
	defer ticker.Stop()
	for {
		// While the applier is far behind (a snapshot of a large table, say),
		// take no new proposals: raft goes on ticking, sending heartbeats and
		// persisting what it has, but the backlog stops growing.
		propc := n.propc
		if n.apply.backlog.Load() > maxApplyBacklog {
			propc = nil
		}
		select {
		case <-n.stopc:
			return
		case <-n.apply.failed:
			n.log.Error().Err(n.apply.err).Msg("applying committed entries failed; stopping the node")
			return
		case <-n.append.failed:
			n.log.Error().Err(n.append.err).Msg("writing raft's log failed; stopping the node")
			return
		case ms := <-n.append.local:
			n.stepLocal(ms)
		case <-n.apply.progress:
			n.reads.release(n.applied.Load())
		case <-ticker.C:
			n.rn.Tick()
			n.checkQuorum()
			n.reads.expire(time.Now(), n.cfg.ElectionTimeout)
		case p := <-propc:
			// With other proposals in flight, let the proposers that are
			// running hand theirs in first: a batch of calls arrives at
			// once, and one Ready for all of them is one append to each
			// follower, not many. A lone proposal is not held.
			if n.inFlight() > 1 {
				runtime.Gosched()
			}
			n.propose(p)
		drainProps:
			for range 1024 {
				select {
				case p := <-n.propc:
					n.propose(p)
				default:
					break drainProps
				}
			}
		case m := <-n.recvc:
			n.step(m)
		drainMsgs:
			for range 1024 {
				select {
				case m := <-n.recvc:
					n.step(m)
				default:
					break drainMsgs
				}
			}
		case w := <-n.readc:
			n.reads.add(w)
		drainReads:
			for {
				select {
				case w := <-n.readc:
					n.reads.add(w)
				default:
					break drainReads
				}
			}
		case f := <-n.funcc:
			f(n.rn)
		}
		n.drain(propc)
		n.campaignIfAlone()
		n.reads.issue(n.rn, time.Now())
		for n.rn.HasReady() {
			if err := n.handleReady(n.rn.Ready()); err != nil {
				// A failed write leaves raft's view of the log ahead of the
				// disk's; the only safe thing left is to stop taking part.
				n.log.Error().Err(err).Msg("raft loop failed; stopping the node")
				return
			}
		}
	}
}

// drain takes the proposals, peer messages and storage responses that are
// waiting, so that one Ready, and one message to each peer, covers them
// all: with storage writes off the loop, it would otherwise turn each
// input into a Ready of its own.
func (n *Node) drain(propc chan proposal) {
	for range 4096 {
		select {
		case p := <-propc:
			n.propose(p)
		case m := <-n.recvc:
			n.step(m)
		case ms := <-n.append.local:
			n.stepLocal(ms)
		default:
			return
		}
	}
}

func (n *Node) stepLocal(ms []*raftpb.Message) {
	for _, m := range ms {
		if err := n.rn.Step(m); err != nil {
			n.log.Debug().Err(err).Stringer("type", m.GetType()).Msg("step of local response failed")
		}
	}
}

// campaignIfAlone makes the only voter of a one-member cluster elect itself
// as soon as its configuration is applied, rather than after an election
// timeout.
func (n *Node) campaignIfAlone() {
	// Only from follower: a candidate waiting for the fsync of its own vote
	// (storage writes are off the loop) would start its election over.
	if v := n.confState.GetVoters(); len(v) == 1 && v[0] == n.id && n.leader.Load() == 0 && !n.rn.HasReady() &&
		n.rn.BasicStatus().RaftState == raft.StateFollower {
		n.rn.Campaign()
	}
}

// checkQuorum records when this node, as leader, last knew a quorum of
// voters to be active (heard from within an election timeout).
func (n *Node) checkQuorum() {
	if n.leader.Load() != n.id {
		return
	}
	active := 0
	n.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		if pr.RecentActive || id == n.id {
			for _, v := range n.confState.GetVoters() {
				if v == id {
					active++
				}
			}
		}
	})
	if active > len(n.confState.GetVoters())/2 {
		n.quorumSeen.Store(int64(time.Since(n.started)))
	}
}

// LeaderSilence is how long this node has not heard from the leader it
// knows: 0 on the leader itself; with no leader known, the time since the
// last one was (check Leader first). A learner never campaigns, so it keeps a
// leader that stopped talking to it (having removed it, say) for good;
// this tells how stale that knowledge is.
func (n *Node) LeaderSilence() time.Duration {
	if n.leader.Load() == n.id {
		return 0
	}
	return time.Since(n.started) - time.Duration(n.leaderHeard.Load())
}

// Leadership reports whether this node leads, its raft term, and whether,
// as leader, it has seen a quorum of voters active within the last
// election timeout. A leader that has not must not take decisions that
// assume it still leads, such as expiring leases.
func (n *Node) Leadership() (leader bool, term uint64, quorum bool) {
	leader = n.leader.Load() == n.id
	term = n.term.Load()
	if leader {
		since := time.Since(n.started) - time.Duration(n.quorumSeen.Load())
		quorum = since < n.cfg.ElectionTimeout
	}
	return leader, term, quorum
}

func (n *Node) propose(p proposal) {
	if err := n.rn.Propose(p.data); err != nil {
		if errors.Is(err, raft.ErrProposalDropped) {
			err = ErrNoLeader
		}
		n.finish(p.id, nil, err)
		return
	}
	if n.cfg.bugs.ackOnPropose {
		n.finish(p.id, nil, nil)
		return
	}
	lead := n.rn.BasicStatus().Lead
	n.waitMu.Lock()
	if w, ok := n.waiters[p.id]; ok {
		w.leader, w.proposed = lead, true
	}
	n.waitMu.Unlock()
}

func (n *Node) step(m *raftpb.Message) {
	if m.GetFrom() == n.leader.Load() {
		n.leaderHeard.Store(int64(time.Since(n.started)))
	}
	if err := n.rn.Step(m); err != nil && !errors.Is(err, raft.ErrStepPeerNotFound) {
		n.log.Debug().Err(err).Stringer("type", m.GetType()).Msg("step failed")
	}
}

func (n *Node) handleReady(rd raft.Ready) error {
	if rd.SoftState != nil {
		n.softState(rd.SoftState)
	}
	if hs := rd.HardState; hs != nil {
		n.term.Store(hs.GetTerm())
		n.commit.Store(hs.GetCommit())
	}
	// The rest go to peers at once: a leader's appends reach its followers
	// while its own write is under way (a follower's acknowledgement waits,
	// in its append's responses, for its write). Before the conf changes
	// below: the commit that removes a member must still reach it.
	out := make([]*raftpb.Message, 0, len(rd.Messages))
	for _, m := range rd.Messages {
		if to := m.GetTo(); to != raft.LocalAppendThread && to != raft.LocalApplyThread {
			out = append(out, m)
		}
	}
	n.tr.send(out)
	for _, rs := range rd.ReadStates {
		n.reads.confirm(rs)
	}
	// A snapshot from the leader: the member table now; the state machine
	// once the appender has saved it (raft hands out no entry past it
	// until then).
	var snapWork *applyWork
	if !raft.IsEmptySnap(rd.Snapshot) {
		env, err := n.restoreMembers(rd.Snapshot)
		if err != nil {
			return fmt.Errorf("restoring snapshot from leader: %w", err)
		}
		idx := rd.Snapshot.GetMetadata().GetIndex()
		snapWork = &applyWork{
			snap:      rd.Snapshot.GetMetadata(),
			snapState: env.GetState(),
			members:   map[uint64]membership{idx: {n.confState, membersOf(n.members)}},
		}
	}
	// Configuration changes are raft's to apply, here on its loop; the
	// applier learns the membership that results, for its snapshots.
	var members map[uint64]membership
	for _, e := range rd.CommittedEntries {
		var cc raftpb.ConfChangeI
		switch e.GetType() {
		case raftpb.EntryConfChange:
			c := new(raftpb.ConfChange)
			if err := proto.Unmarshal(e.GetData(), c); err != nil {
				return fmt.Errorf("decoding conf change at %d: %w", e.GetIndex(), err)
			}
			cc = c
		case raftpb.EntryConfChangeV2:
			c := new(raftpb.ConfChangeV2)
			if err := proto.Unmarshal(e.GetData(), c); err != nil {
				return fmt.Errorf("decoding conf change at %d: %w", e.GetIndex(), err)
			}
			cc = c
		default:
			continue
		}
		n.applyConfChange(cc)
		if members == nil {
			members = map[uint64]membership{}
		}
		members[e.GetIndex()] = membership{n.confState, membersOf(n.members)}
	}
	// With asynchronous storage writes, raft addresses the log write and
	// the application of committed entries as messages to this node's
	// storage threads, each carrying the responses to deliver when done.
	for _, m := range rd.Messages {
		switch m.GetTo() {
		case raft.LocalAppendThread:
			n.append.push(appendJob{m: m, snap: snapWork})
			snapWork = nil
		case raft.LocalApplyThread:
			n.apply.push(applyWork{ents: m.GetEntries(), members: members})
			// Raft counts the entries applied once they are queued, as
			// Advance did: its own bookkeeping (flow control, pending
			// conf changes) needs no more, and the applier answers
			// proposals and reads itself.
			for _, r := range m.GetResponses() {
				if err := n.rn.Step(r); err != nil {
					return fmt.Errorf("stepping apply response: %w", err)
				}
			}
		}
	}
	n.reads.release(n.applied.Load())
	return nil
}

func (n *Node) softState(ss *raft.SoftState) {
	n.leader.Store(ss.Lead)
	n.lead.set(ss.Lead != 0, time.Now())
	if ss.Lead != n.lastLead {
		n.leaderHeard.Store(int64(time.Since(n.started)))
		n.waitMu.Lock()
		for id, w := range n.waiters {
			if w.proposed && w.leader != ss.Lead {
				w.answer(result{err: ErrLeaderChanged})
				delete(n.waiters, id)
			}
		}
		n.waitMu.Unlock()
		n.metrics.leaderChanges.Inc()
		n.log.Info().Str("leader", strconv.FormatUint(ss.Lead, 16)).Stringer("state", ss.RaftState).Msg("leader changed")
		n.lastLead = ss.Lead
	}
}

func (n *Node) applyConfChange(cc raftpb.ConfChangeI) {
	n.confState = n.rn.ApplyConfChange(cc)
	v2 := cc.AsV2()
	for _, c := range v2.GetChanges() {
		id := c.GetNodeId()
		switch c.GetType() {
		case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
			m := new(peerv1.Member)
			if err := proto.Unmarshal(v2.GetContext(), m); err == nil && m.GetName() != "" {
				m.Id = id
				n.members[id] = m
				n.setPeerURL(id, m.GetUrl())
			}
		case raftpb.ConfChangeRemoveNode:
			delete(n.members, id)
			n.peerURL.Delete(id)
			n.tr.removePeer(id)
			if id == n.id {
				n.log.Warn().Msg("this member was removed from the cluster")
				n.removedOnce.Do(func() { close(n.removed) })
			}
		}
	}
}

func (n *Node) setPeerURL(id uint64, url string) {
	n.peerURL.Store(id, url)
	n.tr.setPeer(id, url)
}

// restore replaces the state machine and the member table with a
// snapshot's, before the loop and the applier start.
func (n *Node) restore(snap *raftpb.Snapshot) error {
	env, err := n.restoreMembers(snap)
	if err != nil {
		return err
	}
	if err := n.sm.Restore(env.GetState()); err != nil {
		return err
	}
	n.apply.lastSnapBytes = uint64(len(env.GetState()))
	n.snapIndex.Store(snap.GetMetadata().GetIndex())
	return nil
}

// restoreMembers replaces the loop's member table and configuration with a
// snapshot's, and returns the snapshot's envelope.
func (n *Node) restoreMembers(snap *raftpb.Snapshot) (*peerv1.Snapshot, error) {
	env := new(peerv1.Snapshot)
	if err := proto.Unmarshal(snap.GetData(), env); err != nil {
		return nil, err
	}
	n.confState = snap.GetMetadata().GetConfState()
	n.members = map[uint64]*peerv1.Member{}
	for _, m := range env.GetMembers() {
		n.members[m.GetId()] = m
		if n.tr != nil {
			n.setPeerURL(m.GetId(), m.GetUrl())
		}
	}
	return env, nil
}

func (n *Node) failAll() {
	n.waitMu.Lock()
	for id, w := range n.waiters {
		w.answer(result{err: ErrStopped})
		delete(n.waiters, id)
	}
	n.waitMu.Unlock()
	n.reads.failAll(ErrStopped)
}
