package server

import (
	"context"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
)

// Cluster is the node as ClusterService sees it.
type Cluster interface {
	// Status reports the node's view of the cluster.
	Status(ctx context.Context) (*lockdv1.StatusResponse, error)
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
