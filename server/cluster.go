package server

import (
	"context"
	"net/url"
	"strings"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
)

// Cluster is the node as ClusterService sees it.
type Cluster interface {
	// Status reports the node's view of the cluster.
	Status(ctx context.Context) (*lockdv1.StatusResponse, error)
	// AddMember, PromoteMember and RemoveMember change the membership on
	// the leader and return once the change is applied there.
	AddMember(ctx context.Context, name, peerURL string, learner bool) error
	PromoteMember(ctx context.Context, name string) error
	RemoveMember(ctx context.Context, name string) error
	// TransferLeader hands leadership to name (any voter if empty).
	TransferLeader(ctx context.Context, name string) error
}

type clusterHandler struct {
	cluster Cluster
	s       *Server
}

func (h *clusterHandler) Status(ctx context.Context, _ *connect.Request[lockdv1.StatusRequest]) (*connect.Response[lockdv1.StatusResponse], error) {
	st, err := h.cluster.Status(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(st), nil
}

func (h *clusterHandler) AddMember(ctx context.Context, req *connect.Request[lockdv1.AddMemberRequest]) (*connect.Response[lockdv1.MembersResponse], error) {
	m := req.Msg
	if err := validateMemberName(m.GetName()); err != nil {
		return nil, err
	}
	if u, err := url.Parse(m.GetPeerUrl()); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, invalid("peer_url %q is not http://host:port", m.GetPeerUrl())
	}
	return h.members(ctx, h.cluster.AddMember(ctx, m.GetName(), strings.TrimRight(m.GetPeerUrl(), "/"), m.GetLearner()))
}

func (h *clusterHandler) PromoteMember(ctx context.Context, req *connect.Request[lockdv1.PromoteMemberRequest]) (*connect.Response[lockdv1.MembersResponse], error) {
	if err := validateMemberName(req.Msg.GetName()); err != nil {
		return nil, err
	}
	return h.members(ctx, h.cluster.PromoteMember(ctx, req.Msg.GetName()))
}

func (h *clusterHandler) RemoveMember(ctx context.Context, req *connect.Request[lockdv1.RemoveMemberRequest]) (*connect.Response[lockdv1.MembersResponse], error) {
	if err := validateMemberName(req.Msg.GetName()); err != nil {
		return nil, err
	}
	return h.members(ctx, h.cluster.RemoveMember(ctx, req.Msg.GetName()))
}

func (h *clusterHandler) TransferLeader(ctx context.Context, req *connect.Request[lockdv1.TransferLeaderRequest]) (*connect.Response[lockdv1.TransferLeaderResponse], error) {
	if name := req.Msg.GetName(); name != "" {
		if err := validateMemberName(name); err != nil {
			return nil, err
		}
	}
	if err := h.cluster.TransferLeader(ctx, req.Msg.GetName()); err != nil {
		return nil, h.s.unavailable(err)
	}
	st, err := h.cluster.Status(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&lockdv1.TransferLeaderResponse{Leader: st.GetLeader()}), nil
}

// members answers a membership change with the membership after it.
func (h *clusterHandler) members(ctx context.Context, err error) (*connect.Response[lockdv1.MembersResponse], error) {
	if err != nil {
		return nil, h.s.unavailable(err)
	}
	st, err := h.cluster.Status(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&lockdv1.MembersResponse{Members: st.GetMembers()}), nil
}

func validateMemberName(name string) error {
	if name == "" || len(name) > 64 || strings.ContainsAny(name, "=, \t\n/") {
		return invalid("member name %q: 1 to 64 characters, none of '=', ',', '/' or spaces", name)
	}
	return nil
}
