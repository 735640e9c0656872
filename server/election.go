package server

import (
	"bytes"
	"context"

	"connectrpc.com/connect"
	"github.com/lockd-io/lockd/election"
	"github.com/lockd-io/lockd/locks"
	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
)

type electionHandler struct{ s *Server }

func validateElection(name string) error {
	if err := election.ValidateName(name); err != nil {
		return invalid("election name: %v", err)
	}
	return nil
}

func (h *electionHandler) Campaign(ctx context.Context, req *connect.Request[lockdv1.CampaignRequest]) (*connect.Response[lockdv1.CampaignResponse], error) {
	m := req.Msg
	if err := validateElection(m.GetName()); err != nil {
		return nil, err
	}
	if m.GetLeaseId() == 0 {
		return nil, invalid("lease_id is required")
	}
	if m.GetRequestId() >= 1<<63 {
		return nil, invalid("request_id must be below 2^63")
	}
	if len(m.GetValue()) > locks.MaxValueBytes {
		return nil, invalid("value is %d bytes, more than the limit of %d", len(m.GetValue()), locks.MaxValueBytes)
	}
	wait, err := parseWait(m.GetWait())
	if err != nil {
		return nil, err
	}
	a := election.Campaign(m.GetName(), m.GetLeaseId(), m.GetRequestId(), m.GetValue())
	a.Attempt = m.GetAttempt()
	a.Try = wait != nil && *wait == 0
	res, err := h.s.acquire(ctx, a, wait, nil)
	if err != nil {
		return nil, toConnect(err)
	}
	resp := &lockdv1.CampaignResponse{Revision: res.Revision, Elected: res.Granted}
	if res.Granted {
		resp.Term = res.Tokens[0]
	}
	return connect.NewResponse(resp), nil
}

func (h *electionHandler) Proclaim(ctx context.Context, req *connect.Request[lockdv1.ProclaimRequest]) (*connect.Response[lockdv1.ProclaimResponse], error) {
	m := req.Msg
	if err := validateElection(m.GetName()); err != nil {
		return nil, err
	}
	if m.GetLeaseId() == 0 || m.GetTerm() == 0 {
		return nil, invalid("lease_id and term are required")
	}
	res, err := h.s.propose(ctx, &statev1.Command{Op: &statev1.Command_SetValue{SetValue: election.Proclaim(m.GetName(), m.GetLeaseId(), m.GetTerm(), m.GetValue())}})
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&lockdv1.ProclaimResponse{Revision: res.Revision}), nil
}

func leaderResponse(info locks.LockInfo, rev uint64) *lockdv1.LeaderResponse {
	resp := &lockdv1.LeaderResponse{Revision: rev}
	if l, ok := election.LeaderOf(info); ok {
		resp.Leader = &lockdv1.LeaderInfo{Value: l.Value, Term: l.Term, LeaseId: l.LeaseID, Owner: l.Owner}
	}
	return resp
}

func (h *electionHandler) Leader(ctx context.Context, req *connect.Request[lockdv1.LeaderRequest]) (*connect.Response[lockdv1.LeaderResponse], error) {
	if err := validateElection(req.Msg.GetName()); err != nil {
		return nil, err
	}
	if err := h.s.read(ctx, req.Msg.GetSerializable()); err != nil {
		return nil, err
	}
	info, rev, _ := h.s.table.Describe(election.LockName(req.Msg.GetName()))
	return connect.NewResponse(leaderResponse(info, rev)), nil
}

func (h *electionHandler) Observe(ctx context.Context, req *connect.Request[lockdv1.ObserveRequest], stream *connect.ServerStream[lockdv1.LeaderResponse]) error {
	if err := validateElection(req.Msg.GetName()); err != nil {
		return err
	}
	name := election.LockName(req.Msg.GetName())
	after := req.Msg.GetAfterRevision()
	var (
		last  *lockdv1.LeaderResponse // what the client has seen
		first = true
	)
	return h.s.watch(ctx, func(e locks.Event) bool { return e.Name == name }, after,
		func() error { return stream.Send(nil) },
		func(e *locks.Event, state locks.LockInfo, rev uint64) error {
			resp := leaderResponse(state, rev) // the current state (e == nil) is sent as it is
			if e != nil {
				if first && after > 0 {
					// A resume replaying from after: the client has seen
					// the leader as of after, so that is not sent again.
					if l, ok := h.s.leaders.at(name, after); ok {
						last = &lockdv1.LeaderResponse{Leader: l, Revision: after}
					}
				}
				// The leader as of this event, not as the table is now: a
				// replayed or late event must not show a later leader.
				if l, ok := h.s.leaders.at(name, e.Revision); ok {
					resp = &lockdv1.LeaderResponse{Leader: l, Revision: e.Revision}
				}
			}
			first = false
			if last != nil && sameLeader(last.GetLeader(), resp.GetLeader()) {
				return nil // a queue change, not a leader change
			}
			last = resp
			return stream.Send(resp)
		},
		func() ([]locks.LockInfo, uint64, error) {
			info, rev, _ := h.s.table.Describe(name)
			return []locks.LockInfo{info}, rev, nil
		})
}

func sameLeader(a, b *lockdv1.LeaderInfo) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.GetTerm() == b.GetTerm() && a.GetLeaseId() == b.GetLeaseId() && bytes.Equal(a.GetValue(), b.GetValue())
}

func (h *electionHandler) Resign(ctx context.Context, req *connect.Request[lockdv1.ResignRequest]) (*connect.Response[lockdv1.ResignResponse], error) {
	m := req.Msg
	if err := validateElection(m.GetName()); err != nil {
		return nil, err
	}
	if m.GetLeaseId() == 0 {
		return nil, invalid("lease_id is required")
	}
	if err := h.s.read(ctx, false); err != nil {
		return nil, err
	}
	info, _, _ := h.s.table.Describe(election.LockName(m.GetName()))
	cmd, err := election.Resign(info, m.GetLeaseId(), m.GetTerm())
	if err != nil {
		return nil, toConnect(err)
	}
	res, err := h.s.propose(ctx, cmd)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&lockdv1.ResignResponse{Revision: res.Revision}), nil
}
