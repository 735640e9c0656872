package node

import (
	"fmt"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// appender writes raft's log appends to the store on a goroutine of its own
// (raft's asynchronous storage writes). The raft loop hands it each Ready's
// MsgStorageAppend and goes on at once, so that while one fsync is under
// way the loop still takes proposals, steps acknowledgements and commits
// entries that a quorum of followers already holds. Appends queued during
// that fsync are written together by the next one: one fsync for all.
//
// Only after an append is on disk are its responses delivered: the
// follower's acknowledgement to the leader, a vote, and the loop's own
// MsgStorageAppendResp that marks the entries stable.
type appender struct {
	workQueue[appendJob]

	// local carries responses addressed to this node back to the loop.
	local chan []*raftpb.Message

	// Owned by the append goroutine: the term and vote on disk, to tell a
	// write that must be synced from one that only moves the commit index.
	term, vote uint64
}

// appendJob is one MsgStorageAppend, and for a snapshot from the leader,
// the applier's work of restoring it, queued once the snapshot is saved.
type appendJob struct {
	m    *raftpb.Message
	snap *applyWork
}

func (a *appender) init(hs *raftpb.HardState) {
	a.workQueue.init()
	a.local = make(chan []*raftpb.Message, 1024)
	a.term, a.vote = hs.GetTerm(), hs.GetVote()
}

// appendLoop runs the appender until stop; appends still queued then are
// dropped, and with them their responses: nothing was acknowledged.
func (n *Node) appendLoop() {
	a := &n.append
	defer close(a.done)
	for {
		jobs, ok := a.take()
		if !ok {
			return
		}
		if err := n.appendJobs(jobs); err != nil {
			// The loop stops the node: raft believes these entries are on
			// their way to disk, and they are not.
			a.fail(err)
			return
		}
	}
}

// appendJobs writes jobs in order, syncing once after the last write if
// any of them must be durable, then delivers their responses.
func (n *Node) appendJobs(jobs []appendJob) error {
	a := &n.append
	mustSync := false
	for _, j := range jobs {
		m := j.m
		if len(m.GetEntries()) > 0 || m.GetSnapshot() != nil ||
			(m.Term != nil && (m.GetTerm() != a.term || m.GetVote() != a.vote)) {
			mustSync = true
		}
	}
	start := time.Now()
	if df, ok := n.cfg.Faults.(DiskFaults); ok && mustSync {
		if d := df.WriteDelay(); d > 0 {
			time.Sleep(d)
		}
	}
	// The store syncs any write with entries, so the jobs are merged into
	// as few writes as the order allows: one, unless a snapshot (which the
	// store installs before the entries of its write) starts another.
	var (
		hs   *raftpb.HardState
		ents []*raftpb.Entry
		snap *raftpb.Snapshot
	)
	flush := func(sync bool) error {
		if err := n.store.SaveReady(hs, ents, snap, sync); err != nil {
			return fmt.Errorf("saving ready: %w", err)
		}
		if hs != nil {
			a.term, a.vote = hs.GetTerm(), hs.GetVote()
		}
		hs, ents, snap = nil, nil, nil
		return nil
	}
	for _, j := range jobs {
		m := j.m
		if m.GetSnapshot() != nil && (hs != nil || len(ents) > 0 || snap != nil) {
			if err := flush(false); err != nil {
				return err
			}
		}
		if m.GetSnapshot() != nil {
			snap = m.GetSnapshot()
		}
		if m.Term != nil {
			hs = &raftpb.HardState{Term: m.Term, Vote: m.Vote, Commit: m.Commit}
		}
		ents = mergeEntries(ents, m.GetEntries())
	}
	// Pebble's synced commit makes the earlier writes durable too.
	if err := flush(mustSync); err != nil {
		return err
	}
	if mustSync {
		n.metrics.fsync.Observe(since(start))
	}
	var local []*raftpb.Message
	for _, j := range jobs {
		if j.snap != nil {
			// Before the responses: raft hands out no entries past the
			// snapshot until it hears the snapshot is stable, so the
			// applier restores it before any of them.
			n.apply.push(*j.snap)
		}
		var remote []*raftpb.Message
		for _, r := range j.m.GetResponses() {
			if r.GetTo() == n.id {
				local = append(local, r)
			} else {
				remote = append(remote, r)
			}
		}
		n.tr.send(remote)
	}
	if len(local) > 0 {
		select {
		case a.local <- local:
		case <-a.quit:
		}
	}
	return nil
}

// mergeEntries returns the log suffix that writing a and then b leaves:
// b replaces the entries of a at and after its first index, as a later
// append replaces a conflicting tail. It does not modify a or b.
func mergeEntries(a, b []*raftpb.Entry) []*raftpb.Entry {
	if len(a) == 0 {
		return b
	}
	if len(b) == 0 {
		return a
	}
	keep := int64(b[0].GetIndex()) - int64(a[0].GetIndex())
	switch {
	case keep <= 0:
		return b
	case keep > int64(len(a)):
		// A gap: not a log raft would write. Keep both so that the store
		// refuses the write, as it would have refused b alone.
		keep = int64(len(a))
	}
	out := make([]*raftpb.Entry, 0, int(keep)+len(b))
	return append(append(out, a[:keep]...), b...)
}
