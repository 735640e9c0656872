package node

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"time"

	peerv1 "github.com/lockd-io/lockd/proto/lockd/peer/v1"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"
)

// ErrNotLeader is returned for a membership change that reached a node that
// does not lead.
var ErrNotLeader = errors.New("node: this node does not lead; membership changes go to the leader")

// MembershipError is a membership change that the cluster's state refuses
// (a name in use, a learner not caught up, the last voter).
type MembershipError struct{ Msg string }

func (e *MembershipError) Error() string { return e.Msg }

func refuse(format string, args ...any) error {
	return &MembershipError{Msg: fmt.Sprintf(format, args...)}
}

// promoteLag is how far a learner may trail the leader's commit index and
// still be promoted: a voter that is far behind would slow every commit. It
// must also be replicating (not waiting for a snapshot or being probed).
const promoteLag = 1000

// AddMember adds the member name, reached at peerURL, as a learner (or as a
// voter), and returns once the change is applied on this node, the leader.
func (n *Node) AddMember(ctx context.Context, name, peerURL string, learner bool) error {
	if u, err := url.Parse(peerURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return refuse("peer URL %q is not http://host:port", peerURL)
	}
	id := MemberID(name)
	typ := raftpb.ConfChangeAddNode
	if learner {
		typ = raftpb.ConfChangeAddLearnerNode
	}
	return n.changeMembers(ctx, func(rn *raft.RawNode) (*raftpb.ConfChangeV2, error) {
		for mid, m := range n.members {
			if mid == id || m.GetName() == name {
				return nil, refuse("%q is a member already", name)
			}
			if m.GetUrl() == peerURL {
				return nil, refuse("%s is the URL of member %q", peerURL, m.GetName())
			}
		}
		data, err := proto.Marshal(&peerv1.Member{Id: id, Name: name, Url: peerURL})
		if err != nil {
			return nil, err
		}
		return &raftpb.ConfChangeV2{
			Changes: []*raftpb.ConfChangeSingle{{Type: typ.Enum(), NodeId: proto.Uint64(id)}},
			Context: data,
		}, nil
	}, func() bool {
		if learner {
			return slices.Contains(n.confState.GetLearners(), id)
		}
		return slices.Contains(n.confState.GetVoters(), id)
	})
}

// PromoteMember makes the learner name a voter, once it has caught up.
func (n *Node) PromoteMember(ctx context.Context, name string) error {
	id := MemberID(name)
	return n.changeMembers(ctx, func(rn *raft.RawNode) (*raftpb.ConfChangeV2, error) {
		if _, ok := n.members[id]; !ok {
			return nil, refuse("%q is not a member", name)
		}
		if !slices.Contains(n.confState.GetLearners(), id) {
			return nil, refuse("%q is not a learner", name)
		}
		st := rn.Status()
		if pr, ok := st.Progress[id]; !ok || pr.State != tracker.StateReplicate || pr.Match+promoteLag < st.HardState.GetCommit() {
			var match uint64
			if ok {
				match = pr.Match
			}
			return nil, refuse("learner %q has %d of %d entries; promote it once it has caught up", name, match, st.HardState.GetCommit())
		}
		return &raftpb.ConfChangeV2{Changes: []*raftpb.ConfChangeSingle{{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: proto.Uint64(id)}}}, nil
	}, func() bool { return slices.Contains(n.confState.GetVoters(), id) })
}

// RemoveMember removes the member name. The last voter stays.
func (n *Node) RemoveMember(ctx context.Context, name string) error {
	id := MemberID(name)
	return n.changeMembers(ctx, func(rn *raft.RawNode) (*raftpb.ConfChangeV2, error) {
		if _, ok := n.members[id]; !ok {
			return nil, refuse("%q is not a member", name)
		}
		if v := n.confState.GetVoters(); len(v) == 1 && v[0] == id {
			return nil, refuse("%q is the last voter", name)
		}
		return &raftpb.ConfChangeV2{Changes: []*raftpb.ConfChangeSingle{{Type: raftpb.ConfChangeRemoveNode.Enum(), NodeId: proto.Uint64(id)}}}, nil
	}, func() bool { _, ok := n.members[id]; return !ok })
}

// changeMembers proposes the conf change build makes, on the leader, and
// waits until done reports it applied. raft takes one change at a time: a
// change proposed while another is pending is dropped, and this waits
// until ctx ends.
func (n *Node) changeMembers(ctx context.Context, build func(*raft.RawNode) (*raftpb.ConfChangeV2, error), done func() bool) error {
	var refused error
	if err := n.do(ctx, func(rn *raft.RawNode) {
		if rn.BasicStatus().RaftState != raft.StateLeader {
			refused = ErrNotLeader
			return
		}
		cc, err := build(rn)
		if err != nil {
			refused = err
			return
		}
		if err := rn.ProposeConfChange(cc); err != nil {
			refused = fmt.Errorf("node: proposing the membership change: %w", err)
		}
	}); err != nil {
		return err
	}
	if refused != nil {
		return refused
	}
	tick := time.NewTicker(n.cfg.HeartbeatInterval / 2)
	defer tick.Stop()
	for {
		var applied bool
		if err := n.do(ctx, func(*raft.RawNode) { applied = done() }); err != nil {
			return err
		}
		if applied {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-n.donec:
			return ErrStopped
		case <-tick.C:
		}
	}
}

// Removed is closed when this node has been removed from the cluster.
func (n *Node) Removed() <-chan struct{} { return n.removed }
