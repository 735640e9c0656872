package main

import (
	"connectrpc.com/connect"
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/lockd-io/lockd/node"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"github.com/lockd-io/lockd/server"
)

// clusterAdapter is the node as the server's ClusterService sees it.
type clusterAdapter struct{ n *node.Node }

func (a clusterAdapter) Status(ctx context.Context) (*lockdv1.StatusResponse, error) {
	st, err := a.n.Status(ctx)
	if err != nil {
		return nil, nodeError(err)
	}
	resp := &lockdv1.StatusResponse{
		Name:           st.Name,
		Id:             strconv.FormatUint(st.ID, 16),
		State:          st.State,
		Leader:         st.LeaderName,
		LeaderUrl:      st.LeaderURL,
		Term:           st.Term,
		CommitIndex:    st.Commit,
		AppliedIndex:   st.Applied,
		SnapshotIndex:  st.SnapshotIndex,
		FirstIndex:     st.FirstIndex,
		LastIndex:      st.LastIndex,
		DiskUsageBytes: st.DiskUsage,
		ClusterId:      strconv.FormatUint(st.ClusterID, 16),
	}
	for _, m := range st.Members {
		mm := &lockdv1.Member{Name: m.Name, Url: m.URL, Learner: m.Learner, Id: strconv.FormatUint(m.ID, 16)}
		if p := m.Progress; p != nil {
			mm.Progress = &lockdv1.Progress{MatchIndex: p.Match, State: p.State, RecentActive: p.RecentActive}
		}
		resp.Members = append(resp.Members, mm)
	}
	return resp, nil
}

func (a clusterAdapter) AddMember(ctx context.Context, name, peerURL string, learner bool) error {
	return memberError(a.n.AddMember(ctx, name, peerURL, learner))
}

func (a clusterAdapter) PromoteMember(ctx context.Context, name string) error {
	return memberError(a.n.PromoteMember(ctx, name))
}

func (a clusterAdapter) RemoveMember(ctx context.Context, name string) error {
	return memberError(a.n.RemoveMember(ctx, name))
}

func (a clusterAdapter) TransferLeader(ctx context.Context, name string) error {
	return memberError(a.n.TransferLeadershipTo(ctx, name))
}

// memberError turns the node's refusals of a membership change into
// FailedPrecondition, and "not the leader" into Unavailable, which sends
// the client to the leader.
func memberError(err error) error {
	var refused *node.MembershipError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &refused):
		return connect.NewError(connect.CodeFailedPrecondition, refused)
	case errors.Is(err, node.ErrNotLeader):
		return fmt.Errorf("%w: %w", server.ErrUnavailable, err)
	}
	return nodeError(err)
}

// raftAdapter is the node as the server sees it.
type raftAdapter struct{ n *node.Node }

func (a raftAdapter) Propose(ctx context.Context, cmd []byte) (any, error) {
	v, err := a.n.Propose(ctx, cmd)
	return v, nodeError(err)
}

func (a raftAdapter) ReadIndex(ctx context.Context) error { return nodeError(a.n.ReadIndex(ctx)) }

func (a raftAdapter) Leadership() (bool, uint64, bool) { return a.n.Leadership() }

func (a raftAdapter) LeaderURL() string { return a.n.LeaderURL() }

// nodeError marks the node's errors that mean "try again, maybe elsewhere"
// so the server answers them with Unavailable.
func nodeError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, node.ErrNoLeader) {
		return fmt.Errorf("%w: %w: %w", server.ErrUnavailable, server.ErrNotProposed, err)
	}
	if errors.Is(err, node.ErrStopped) || errors.Is(err, node.ErrReadTimeout) || errors.Is(err, node.ErrLeaderChanged) {
		return fmt.Errorf("%w: %w", server.ErrUnavailable, err)
	}
	return err
}
