package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"

	"connectrpc.com/connect"
	"github.com/lockd-io/lockd/locks"
	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"github.com/lockd-io/lockd/proto/lockd/v1/lockdv1connect"
	"google.golang.org/protobuf/types/known/durationpb"
)

// forwardedHeader marks a keep-alive forwarded to the leader, so that two
// nodes that disagree about who leads cannot bounce it between them.
const forwardedHeader = "Lockd-Forwarded"

type leaseHandler struct{ s *Server }

func (h *leaseHandler) Grant(ctx context.Context, req *connect.Request[lockdv1.GrantRequest]) (*connect.Response[lockdv1.GrantResponse], error) {
	m := req.Msg
	if m.GetTtl() == nil {
		return nil, invalid("ttl is required")
	}
	if err := m.GetTtl().CheckValid(); err != nil {
		return nil, invalid("ttl: %v", err)
	}
	ttl := m.GetTtl().AsDuration()
	switch {
	case ttl < h.s.cfg.MinTTL:
		return nil, invalid("ttl %v is below the minimum of %v (the cluster's election timeout): a shorter lease could expire during an ordinary leader election", ttl, h.s.cfg.MinTTL)
	case ttl > locks.MaxTTL:
		return nil, invalid("ttl %v is above the maximum of %v", ttl, locks.MaxTTL)
	case len(m.GetOwner()) > locks.MaxOwnerBytes:
		return nil, invalid("owner is %d bytes, more than the limit of %d", len(m.GetOwner()), locks.MaxOwnerBytes)
	}
	res, err := h.s.propose(ctx, &statev1.Command{Op: &statev1.Command_GrantLease{GrantLease: &statev1.GrantLease{TtlMs: ttl.Milliseconds(), Owner: m.GetOwner()}}})
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&lockdv1.GrantResponse{LeaseId: res.LeaseID, Ttl: durationpb.New(ttl), Revision: res.Revision}), nil
}

func (h *leaseHandler) KeepAlive(ctx context.Context, req *connect.Request[lockdv1.KeepAliveRequest]) (*connect.Response[lockdv1.KeepAliveResponse], error) {
	id := req.Msg.GetLeaseId()
	if id == 0 {
		return nil, invalid("lease_id is required")
	}
	ttl, leader, found, err := h.s.keeper.keepAlive(ctx, id)
	switch {
	case err != nil:
		return nil, h.s.unavailable(err)
	case !leader:
		return h.forward(ctx, req)
	case !found:
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("lease %d not found (it never existed, was revoked or expired)", id))
	}
	return connect.NewResponse(&lockdv1.KeepAliveResponse{Ttl: durationpb.New(ttl)}), nil
}

// maxKeepAliveMany bounds the leases of one KeepAliveMany.
const maxKeepAliveMany = 50000

func (h *leaseHandler) KeepAliveMany(ctx context.Context, req *connect.Request[lockdv1.KeepAliveManyRequest]) (*connect.Response[lockdv1.KeepAliveManyResponse], error) {
	ids := req.Msg.GetLeaseIds()
	switch {
	case len(ids) == 0:
		return nil, invalid("lease_ids is empty")
	case len(ids) > maxKeepAliveMany:
		return nil, invalid("%d lease_ids: at most %d in one call", len(ids), maxKeepAliveMany)
	case slices.Contains(ids, 0):
		return nil, invalid("lease_ids contains 0, which is no lease")
	}
	ttls, leader, err := h.s.keeper.keepAliveMany(ctx, ids)
	switch {
	case err != nil:
		return nil, h.s.unavailable(err)
	case !leader:
		c, err := h.leaderClient(req.Header())
		if err != nil {
			return nil, err
		}
		resp, err := c.KeepAliveMany(ctx, forwarded(req))
		if err != nil {
			return nil, h.forwardError(err)
		}
		return connect.NewResponse(resp.Msg), nil
	}
	resp := &lockdv1.KeepAliveManyResponse{Results: make([]*lockdv1.KeepAliveResult, len(ids))}
	for i, id := range ids {
		r := &lockdv1.KeepAliveResult{LeaseId: id, Found: ttls[i] > 0}
		if r.Found {
			r.Ttl = durationpb.New(ttls[i])
		}
		resp.Results[i] = r
	}
	return connect.NewResponse(resp), nil
}

// forward sends a keep-alive to the leader, which alone tracks deadlines.
func (h *leaseHandler) forward(ctx context.Context, req *connect.Request[lockdv1.KeepAliveRequest]) (*connect.Response[lockdv1.KeepAliveResponse], error) {
	c, err := h.leaderClient(req.Header())
	if err != nil {
		return nil, err
	}
	resp, err := c.KeepAlive(ctx, forwarded(req))
	if err != nil {
		return nil, h.forwardError(err)
	}
	return connect.NewResponse(resp.Msg), nil
}

// forwarded is a copy of req for the leader. It carries the caller's
// token, so that the leader judges the caller, not this node.
func forwarded[T any](req *connect.Request[T]) *connect.Request[T] {
	fwd := connect.NewRequest(req.Msg)
	fwd.Header().Set(forwardedHeader, "1")
	if a := req.Header().Get("Authorization"); a != "" {
		fwd.Header().Set("Authorization", a)
	}
	return fwd
}

// leaderClient is a client of the leader's lease service, for a request
// that was not forwarded already (a forward must not bounce between two
// nodes that each think the other leads).
func (h *leaseHandler) leaderClient(hdr http.Header) (lockdv1connect.LeaseServiceClient, error) {
	url := h.s.raft.LeaderURL()
	if url == "" || hdr.Get(forwardedHeader) != "" {
		return nil, h.s.unavailable(fmt.Errorf("%w: this node does not lead and knows no leader to forward the keep-alive to", ErrUnavailable))
	}
	h.s.forwardMu.Lock()
	defer h.s.forwardMu.Unlock()
	c, ok := h.s.forwards[url]
	if !ok {
		c = lockdv1connect.NewLeaseServiceClient(h.s.hc, url)
		h.s.forwards[url] = c
	}
	return c, nil
}

// forwardError passes the leader's answer on, and reports a failure to
// reach it as Unavailable.
func (h *leaseHandler) forwardError(err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	return h.s.unavailable(fmt.Errorf("%w: forwarding to the leader: %v", ErrUnavailable, err))
}

func (h *leaseHandler) Revoke(ctx context.Context, req *connect.Request[lockdv1.RevokeRequest]) (*connect.Response[lockdv1.RevokeResponse], error) {
	if req.Msg.GetLeaseId() == 0 {
		return nil, invalid("lease_id is required")
	}
	res, err := h.s.propose(ctx, &statev1.Command{Op: &statev1.Command_RevokeLease{RevokeLease: &statev1.RevokeLease{LeaseId: req.Msg.GetLeaseId()}}})
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&lockdv1.RevokeResponse{Revision: res.Revision}), nil
}

func (h *leaseHandler) Get(ctx context.Context, req *connect.Request[lockdv1.GetLeaseRequest]) (*connect.Response[lockdv1.GetLeaseResponse], error) {
	if err := h.s.read(ctx, req.Msg.GetSerializable()); err != nil {
		return nil, err
	}
	info, ok := h.s.table.Lease(req.Msg.GetLeaseId())
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("lease %d not found", req.Msg.GetLeaseId()))
	}
	if err := h.s.mayUseLeases(ctx, info.ID); err != nil {
		return nil, err
	}
	return connect.NewResponse(&lockdv1.GetLeaseResponse{Lease: leaseProto(info)}), nil
}

func leaseProto(info locks.LeaseInfo) *lockdv1.Lease {
	l := &lockdv1.Lease{Id: info.ID, Ttl: durationpb.New(info.TTL), Owner: info.Owner, GrantedRevision: info.GrantedRev, Waiting: info.Waiting, Principal: info.Principal}
	for _, g := range info.Held {
		l.Held = append(l.Held, &lockdv1.Grant{Name: g.Name, Token: g.Token, Mode: modeOf(g.Mode)})
	}
	return l
}

func (h *leaseHandler) List(ctx context.Context, req *connect.Request[lockdv1.ListLeasesRequest]) (*connect.Response[lockdv1.ListLeasesResponse], error) {
	m := req.Msg
	limit, err := pageLimit(m.GetLimit())
	if err != nil {
		return nil, err
	}
	var after uint64
	if t := m.GetPageToken(); t != "" {
		v, err := strconv.ParseUint(t, 10, 64)
		if err != nil {
			return nil, invalid("page_token is not one List returned")
		}
		after = v
	}
	if err := h.s.read(ctx, m.GetSerializable()); err != nil {
		return nil, err
	}
	infos, more := h.s.table.Leases(after, limit)
	resp := &lockdv1.ListLeasesResponse{}
	p := principalFrom(ctx)
	for _, info := range infos {
		if p.mayUseLeaseOf(info.Principal) {
			resp.Leases = append(resp.Leases, leaseProto(info))
		}
	}
	if more {
		resp.NextPageToken = strconv.FormatUint(infos[len(infos)-1].ID, 10)
	}
	return connect.NewResponse(resp), nil
}

func (h *leaseHandler) Events(ctx context.Context, req *connect.Request[lockdv1.LeaseEventsRequest], stream *connect.ServerStream[lockdv1.LeaseEvent]) error {
	id := req.Msg.GetLeaseId()
	// Losses and the lease's end, not every grant and release: those the
	// holder learns from its own calls.
	sub := h.s.hub.subscribeLease(id, leaseSubBuffer, func(e locks.Event) bool {
		return e.Type == locks.ForceReleased || e.Type == locks.LeaseEnded || (e.Type == locks.Released && e.Reason != "released")
	})
	defer sub.close()
	if err := h.s.read(ctx, false); err != nil {
		return err
	}
	// The lease's grants and the revision they are of, read together: events
	// after that revision follow on the stream, none is lost in between.
	info, floor, ok := h.s.table.LeaseAt(id)
	if !ok {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("lease %d not found", id))
	}
	if err := h.s.mayUseLeases(ctx, id); err != nil {
		return err
	}
	if err := stream.Send(nil); err != nil { // headers now; see Watch
		return err
	}
	// Start with what the lease holds now, so a client that reconnects
	// learns its grants without a separate call.
	for _, g := range info.Held {
		if err := stream.Send(&lockdv1.LeaseEvent{Type: lockdv1.LeaseEvent_TYPE_GRANTED, Revision: floor, Name: g.Name, Token: g.Token, Reason: "held"}); err != nil {
			return err
		}
	}
	if err := stream.Send(&lockdv1.LeaseEvent{Type: lockdv1.LeaseEvent_TYPE_SYNCED, Revision: floor}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-h.s.bg.Done():
			return errShuttingDown
		case <-sub.lost:
			return connect.NewError(connect.CodeResourceExhausted, errors.New("the stream fell behind; reconnect"))
		case e := <-sub.c:
			if e.Revision <= floor {
				continue
			}
			ev := &lockdv1.LeaseEvent{Revision: e.Revision, Name: e.Name, Token: e.Token, Reason: e.Reason}
			switch e.Type {
			case locks.Granted:
				ev.Type = lockdv1.LeaseEvent_TYPE_GRANTED
			case locks.Released:
				ev.Type = lockdv1.LeaseEvent_TYPE_RELEASED
				if e.Reason != "released" {
					// Not the holder's own release: the lease's end took it,
					// or a cancelled acquire whose grant won the race.
					ev.Type = lockdv1.LeaseEvent_TYPE_LOST
				}
			case locks.ForceReleased:
				ev.Type = lockdv1.LeaseEvent_TYPE_LOST
				ev.Reason = "force-released: " + e.Reason
			case locks.LeaseEnded:
				ev.Type = lockdv1.LeaseEvent_TYPE_LEASE_ENDED
			default:
				continue
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
			if e.Type == locks.LeaseEnded {
				return nil
			}
		}
	}
}
