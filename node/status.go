package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/tracker"
)

// Status is a node's view of its cluster.
type Status struct {
	ID, Leader    uint64
	ClusterID     uint64
	Name          string
	LeaderName    string
	LeaderURL     string
	State         string // "leader", "follower", "candidate", "pre-candidate"
	Term, Commit  uint64
	Applied       uint64
	SnapshotIndex uint64
	FirstIndex    uint64
	LastIndex     uint64
	DiskUsage     uint64
	Members       []MemberStatus // sorted by name
}

// MemberStatus describes one member.
type MemberStatus struct {
	ID      uint64
	Name    string
	URL     string
	Learner bool
	// Progress is the leader's view of the member's replication; nil unless
	// this node is the leader.
	Progress *Progress
}

// Progress is how far the leader has replicated to one member.
type Progress struct {
	Match        uint64
	State        string // "probe", "replicate", "snapshot"
	RecentActive bool
}

// Status reports the node's view of the cluster, read on the raft loop.
func (n *Node) Status(ctx context.Context) (Status, error) {
	var s Status
	err := n.do(ctx, func(rn *raft.RawNode) {
		st := rn.Status()
		s = Status{
			ID:            n.id,
			ClusterID:     n.cluster,
			Name:          n.cfg.Name,
			Leader:        st.Lead,
			State:         stateName(st.RaftState),
			Term:          st.HardState.GetTerm(),
			Commit:        st.HardState.GetCommit(),
			Applied:       n.applied.Load(),
			SnapshotIndex: n.snapIndex.Load(),
			DiskUsage:     n.store.DiskUsage(),
		}
		s.FirstIndex, _ = n.store.FirstIndex()
		s.LastIndex, _ = n.store.LastIndex()
		learners := map[uint64]bool{}
		for _, id := range n.confState.GetLearners() {
			learners[id] = true
		}
		for _, id := range n.confState.GetLearnersNext() {
			learners[id] = true
		}
		ids := map[uint64]bool{}
		for _, id := range n.confState.GetVoters() {
			ids[id] = true
		}
		for id := range learners {
			ids[id] = true
		}
		for id := range ids {
			ms := MemberStatus{ID: id, Learner: learners[id]}
			if m, ok := n.members[id]; ok {
				ms.Name, ms.URL = m.GetName(), m.GetUrl()
			}
			if pr, ok := st.Progress[id]; ok {
				ms.Progress = &Progress{Match: pr.Match, State: progressName(pr.State), RecentActive: pr.RecentActive}
			}
			if id == st.Lead {
				s.LeaderName, s.LeaderURL = ms.Name, ms.URL
			}
			s.Members = append(s.Members, ms)
		}
		sort.Slice(s.Members, func(i, j int) bool { return s.Members[i].Name < s.Members[j].Name })
	})
	return s, err
}

func stateName(s raft.StateType) string {
	switch s {
	case raft.StateLeader:
		return "leader"
	case raft.StateCandidate:
		return "candidate"
	case raft.StatePreCandidate:
		return "pre-candidate"
	default:
		return "follower"
	}
}

func progressName(s tracker.StateType) string {
	switch s {
	case tracker.StateReplicate:
		return "replicate"
	case tracker.StateSnapshot:
		return "snapshot"
	default:
		return "probe"
	}
}

// TransferLeadership hands leadership to the most up-to-date other voter
// that is active, and waits until this node is no longer leader. It returns
// at once, with no error, if this node is not the leader or is the only
// voter; if no other voter has been heard from yet (a leader just elected),
// it waits for one until ctx ends.
func (n *Node) TransferLeadership(ctx context.Context) error {
	err := n.transfer(ctx, 0)
	if errors.Is(err, ErrNotLeader) {
		return nil
	}
	return err
}

// TransferLeadershipTo hands leadership to the voter name (to the most
// up-to-date active voter if name is empty) and waits until it has moved.
// It returns ErrNotLeader on a node that does not lead.
func (n *Node) TransferLeadershipTo(ctx context.Context, name string) error {
	if name == "" {
		return n.transfer(ctx, 0)
	}
	id := MemberID(name)
	var refused error
	if err := n.do(ctx, func(*raft.RawNode) {
		if _, ok := n.members[id]; !ok {
			refused = refuse("%q is not a member", name)
		} else if !slices.Contains(n.confState.GetVoters(), id) {
			refused = refuse("%q is a learner; only a voter can lead", name)
		}
	}); err != nil {
		return err
	}
	if refused != nil {
		return refused
	}
	return n.transfer(ctx, id)
}

// transfer hands leadership to want (any active voter if 0) and waits
// until this node no longer leads (and want leads, if given).
func (n *Node) transfer(ctx context.Context, want uint64) error {
	tick := time.NewTicker(n.cfg.HeartbeatInterval / 2)
	defer tick.Stop()
	started, first := false, true
	var startedAt time.Time
	for {
		// raft gives a transfer up after an election timeout (the target
		// did not catch up): then pick again.
		if started && time.Since(startedAt) > n.cfg.ElectionTimeout {
			started = false
		}
		var leader, alone bool
		if err := n.do(ctx, func(rn *raft.RawNode) {
			st := rn.Status()
			leader = st.RaftState == raft.StateLeader
			alone = len(n.confState.GetVoters()) <= 1
			if !leader || alone || started {
				return
			}
			var target, best uint64
			for _, id := range n.confState.GetVoters() {
				if pr, ok := st.Progress[id]; ok && id != n.id && pr.RecentActive && pr.Match >= best && (want == 0 || id == want) {
					target, best = id, pr.Match
				}
			}
			if target != 0 {
				rn.TransferLeader(target)
				started, startedAt = true, time.Now()
			}
		}); err != nil {
			return err
		}
		switch {
		case first && !leader:
			return ErrNotLeader
		case want == n.id:
			return nil
		case !leader && (want == 0 || n.leader.Load() == want):
			return nil
		case alone:
			return nil
		}
		first = false
		select {
		case <-ctx.Done():
			if !started {
				return fmt.Errorf("no other voter to hand leadership to: %w", ctx.Err())
			}
			return ctx.Err()
		case <-n.donec:
			return ErrStopped
		case <-tick.C:
		}
	}
}

// Ready reports why this node should not take client traffic now, or nil:
// it knows no leader, it leads without having heard from a quorum within an
// election timeout, or it is far (readyLag entries) behind the log it knows
// committed, as while it replays its log after a restart.
func (n *Node) Ready() error {
	lead := n.leader.Load()
	switch {
	case lead == 0:
		return errors.New("no leader known")
	case lead == n.id:
		if _, _, quorum := n.Leadership(); !quorum {
			return errors.New("leading without a quorum")
		}
	}
	if applied, commit := n.applied.Load(), n.commit.Load(); applied+readyLag < commit {
		return fmt.Errorf("applying the log: %d of %d", applied, commit)
	}
	return nil
}

// readyLag is how far the applied index may trail the commit index of a
// ready node: under load it always trails a little.
const readyLag = 1000
