package server

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/lockd-io/lockd/election"
	"github.com/lockd-io/lockd/locks"
	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type lockHandler struct{ s *Server }

// validateLockName checks a name given to LockService: a valid lock name
// outside the namespace elections use.
func validateLockName(name string) error {
	if err := locks.ValidateName(name); err != nil {
		return invalid("%v", err)
	}
	if locks.Namespace(name) == election.Namespace {
		return invalid("lock name %q is in the namespace %q, which is reserved for elections", name, election.Namespace)
	}
	return nil
}

func (h *lockHandler) Acquire(ctx context.Context, req *connect.Request[lockdv1.AcquireRequest]) (*connect.Response[lockdv1.AcquireResponse], error) {
	resp, _, err := h.acquire(ctx, req.Msg, nil)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
}

// acquire serves an Acquire, unary or pipelined; waiterID identifies a
// grant's waiter, for undoing it. detach is as for Server.acquire.
func (h *lockHandler) acquire(ctx context.Context, m *lockdv1.AcquireRequest, detach <-chan struct{}) (_ *lockdv1.AcquireResponse, waiterID uint64, _ error) {
	names := append([]string{m.GetName()}, m.GetAlso()...)
	for _, n := range names {
		if err := validateLockName(n); err != nil {
			return nil, 0, err
		}
	}
	if m.GetLeaseId() == 0 {
		return nil, 0, invalid("lease_id is required")
	}
	if m.GetRequestId() >= 1<<63 {
		return nil, 0, invalid("request_id must be below 2^63")
	}
	wait, err := parseWait(m.GetWait())
	if err != nil {
		return nil, 0, err
	}
	var delay time.Duration
	if d := m.GetLockDelay(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, 0, invalid("lock_delay: %v", err)
		}
		delay = d.AsDuration()
	}
	a := &statev1.Acquire{
		Names:       names,
		LeaseId:     m.GetLeaseId(),
		RequestId:   m.GetRequestId(),
		Attempt:     m.GetAttempt(),
		Try:         wait != nil && *wait == 0,
		Mode:        int32(m.GetMode()),
		Capacity:    m.GetCapacity(),
		LockDelayMs: delay.Milliseconds(),
		Value:       m.GetValue(),
	}
	if delay > 0 && delay < time.Millisecond {
		return nil, 0, invalid("lock_delay %v is below the resolution of 1ms", delay)
	}
	res, err := h.s.acquire(ctx, a, wait, detach)
	if err != nil {
		return nil, 0, toConnect(err)
	}
	resp := &lockdv1.AcquireResponse{Granted: res.Granted, Revision: res.Revision, Position: res.Position}
	if res.Granted {
		resp.Token = res.Tokens[0]
		for i, n := range names {
			resp.Grants = append(resp.Grants, &lockdv1.Grant{Name: n, Token: res.Tokens[i], Mode: m.GetMode()})
		}
		// Only the leader knows how long the lease has left.
		if ttl, ok := h.s.keeper.remaining(m.GetLeaseId()); ok {
			resp.Ttl = durationpb.New(ttl)
		}
	}
	return resp, res.WaiterID, nil
}

// parseWait checks the wait of an acquire or a campaign: nil when absent
// (wait until the call's deadline).
func parseWait(w *durationpb.Duration) (*time.Duration, error) {
	if w == nil {
		return nil, nil
	}
	if err := w.CheckValid(); err != nil {
		return nil, invalid("wait: %v", err)
	}
	d := w.AsDuration()
	if d < 0 {
		return nil, invalid("wait %v is negative", d)
	}
	return &d, nil
}

func (h *lockHandler) Release(ctx context.Context, req *connect.Request[lockdv1.ReleaseRequest]) (*connect.Response[lockdv1.ReleaseResponse], error) {
	m := req.Msg
	if err := validateLockName(m.GetName()); err != nil {
		return nil, err
	}
	if m.GetLeaseId() == 0 {
		return nil, invalid("lease_id is required")
	}
	res, err := h.s.propose(ctx, &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{
		Name: m.GetName(), LeaseId: m.GetLeaseId(), Token: m.GetToken(), RequestId: m.GetRequestId()}}})
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&lockdv1.ReleaseResponse{Revision: res.Revision}), nil
}

// pageLimit is a List call's page size: 100 by default, at most 1000.
func pageLimit(limit uint32) (int, error) {
	switch {
	case limit == 0:
		return 100, nil
	case limit > 1000:
		return 0, invalid("limit %d is above the maximum of 1000", limit)
	}
	return int(limit), nil
}

func describeResponse(info locks.LockInfo, rev uint64) *lockdv1.DescribeResponse {
	d := &lockdv1.DescribeResponse{Name: info.Name, Capacity: info.Capacity, Revision: rev, DelayReason: info.DelayReason}
	if info.Delay > 0 {
		d.LockDelay = durationpb.New(info.Delay)
	}
	if info.DelayedUntil != 0 {
		d.DelayedUntil = timestamppb.New(time.Unix(0, info.DelayedUntil))
	}
	for _, hd := range info.Holders {
		d.Holders = append(d.Holders, &lockdv1.Holder{LeaseId: hd.LeaseID, Token: hd.Token, Mode: modeOf(hd.Mode), Owner: hd.Owner, Value: hd.Value})
	}
	for _, w := range info.Waiters {
		d.Waiters = append(d.Waiters, &lockdv1.Waiter{LeaseId: w.LeaseID, QueuedRevision: w.ID, Mode: modeOf(w.Mode), Owner: w.Owner})
	}
	return d
}

func (h *lockHandler) Describe(ctx context.Context, req *connect.Request[lockdv1.DescribeRequest]) (*connect.Response[lockdv1.DescribeResponse], error) {
	if err := locks.ValidateName(req.Msg.GetName()); err != nil {
		return nil, invalid("%v", err)
	}
	if err := h.s.read(ctx, req.Msg.GetSerializable()); err != nil {
		return nil, err
	}
	info, rev, _ := h.s.table.Describe(req.Msg.GetName())
	return connect.NewResponse(describeResponse(info, rev)), nil
}

func (h *lockHandler) List(ctx context.Context, req *connect.Request[lockdv1.ListRequest]) (*connect.Response[lockdv1.ListResponse], error) {
	m := req.Msg
	limit, err := pageLimit(m.GetLimit())
	if err != nil {
		return nil, err
	}
	if len(m.GetPrefix()) > locks.MaxNameBytes {
		return nil, invalid("prefix is longer than a lock name can be")
	}
	after := ""
	if t := m.GetPageToken(); t != "" {
		b, err := base64.RawURLEncoding.DecodeString(t)
		if err != nil {
			return nil, invalid("page_token is not one List returned")
		}
		after = string(b)
	}
	if err := h.s.read(ctx, m.GetSerializable()); err != nil {
		return nil, err
	}
	infos, rev, more := h.s.table.List(m.GetPrefix(), after, limit)
	resp := &lockdv1.ListResponse{Revision: rev}
	for _, info := range infos {
		resp.Locks = append(resp.Locks, describeResponse(info, rev))
	}
	if more {
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(infos[len(infos)-1].Name))
	}
	return connect.NewResponse(resp), nil
}

func (h *lockHandler) CheckFence(ctx context.Context, req *connect.Request[lockdv1.CheckFenceRequest]) (*connect.Response[lockdv1.CheckFenceResponse], error) {
	if err := locks.ValidateName(req.Msg.GetName()); err != nil {
		return nil, invalid("%v", err)
	}
	if req.Msg.GetToken() == 0 {
		return nil, invalid("token is required")
	}
	if err := h.s.read(ctx, false); err != nil {
		return nil, err
	}
	valid, rev := h.s.table.CheckFence(req.Msg.GetName(), req.Msg.GetToken())
	return connect.NewResponse(&lockdv1.CheckFenceResponse{Valid: valid, Revision: rev}), nil
}

func (h *lockHandler) ForceRelease(ctx context.Context, req *connect.Request[lockdv1.ForceReleaseRequest]) (*connect.Response[lockdv1.ForceReleaseResponse], error) {
	m := req.Msg
	if err := locks.ValidateName(m.GetName()); err != nil {
		return nil, invalid("%v", err)
	}
	if strings.TrimSpace(m.GetReason()) == "" {
		return nil, invalid("reason is required: the holder and the log are told why their lock was broken")
	}
	res, err := h.s.propose(ctx, &statev1.Command{Op: &statev1.Command_ForceRelease{ForceRelease: &statev1.ForceRelease{Name: m.GetName(), Token: m.GetToken(), Reason: m.GetReason()}}})
	if err != nil {
		return nil, toConnect(err)
	}
	h.s.log.Warn().Str("lock", m.GetName()).Uint64("token", m.GetToken()).Str("reason", m.GetReason()).Uint32("released", res.Count).Msg("force release")
	return connect.NewResponse(&lockdv1.ForceReleaseResponse{Revision: res.Revision, Released: res.Count}), nil
}

var watchTypes = map[locks.EventType]lockdv1.WatchEvent_Type{
	locks.Granted:       lockdv1.WatchEvent_TYPE_GRANTED,
	locks.Released:      lockdv1.WatchEvent_TYPE_RELEASED,
	locks.Queued:        lockdv1.WatchEvent_TYPE_QUEUED,
	locks.Withdrawn:     lockdv1.WatchEvent_TYPE_WITHDRAWN,
	locks.ForceReleased: lockdv1.WatchEvent_TYPE_FORCE_RELEASED,
	locks.Delayed:       lockdv1.WatchEvent_TYPE_DELAYED,
	locks.DelayEnded:    lockdv1.WatchEvent_TYPE_DELAY_ENDED,
	locks.ValueSet:      lockdv1.WatchEvent_TYPE_VALUE,
}

func (h *lockHandler) Watch(ctx context.Context, req *connect.Request[lockdv1.WatchRequest], stream *connect.ServerStream[lockdv1.WatchEvent]) error {
	m := req.Msg
	if !m.GetPrefix() {
		if err := locks.ValidateName(m.GetName()); err != nil {
			return invalid("%v", err)
		}
	} else if len(m.GetName()) > locks.MaxNameBytes {
		return invalid("prefix is longer than a lock name can be")
	}
	match := func(e locks.Event) bool {
		if e.Name == "" {
			return false
		}
		if m.GetPrefix() {
			return strings.HasPrefix(e.Name, m.GetName())
		}
		return e.Name == m.GetName()
	}
	return h.s.watch(ctx, match, m.GetAfterRevision(), func() error { return stream.Send(nil) }, func(e *locks.Event, state locks.LockInfo, rev uint64) error {
		ev := &lockdv1.WatchEvent{Type: lockdv1.WatchEvent_TYPE_STATE, Revision: rev, Name: state.Name, State: describeResponse(state, rev)}
		if e != nil {
			ev.Type = watchTypes[e.Type]
			if e.Type == locks.Released && e.Reason == "expired" {
				ev.Type = lockdv1.WatchEvent_TYPE_EXPIRED
			}
			ev.Revision, ev.Name, ev.LeaseId, ev.Token, ev.Reason = e.Revision, e.Name, e.LeaseID, e.Token, e.Reason
		}
		return stream.Send(ev)
	}, func() ([]locks.LockInfo, uint64, error) {
		if !m.GetPrefix() {
			info, rev, _ := h.s.table.Describe(m.GetName())
			return []locks.LockInfo{info}, rev, nil
		}
		var all []locks.LockInfo
		var first uint64
		after := ""
		for {
			page, rev, more := h.s.table.List(m.GetName(), after, 1000)
			if first == 0 {
				first = rev // the oldest of the pages: later events may repeat, none is missed
			}
			all = append(all, page...)
			if !more {
				return all, first, nil
			}
			if len(all) >= 10000 {
				return nil, 0, connect.NewError(connect.CodeResourceExhausted, errors.New("more than 10000 locks under the prefix; watch a narrower one"))
			}
			after = page[len(page)-1].Name
		}
	})
}

// watch runs a watch stream: the current state first (or, when resuming
// from a revision this node still has, the events since), then every
// matching event, each with the current state of its lock.
//
// started is called once the starting point is fixed and sent, before the
// first event: it sends the response headers, so that a client's call
// returns only then (a quiet watch may have nothing else to send for a long
// time), and anything the client changes after its call returned reaches it
// as an event.
func (s *Server) watch(ctx context.Context, match func(locks.Event) bool, after uint64, started func() error,
	send func(e *locks.Event, state locks.LockInfo, rev uint64) error,
	current func() ([]locks.LockInfo, uint64, error)) error {
	sub, replay, complete := s.hub.subscribe(match, after)
	defer func() { sub.close() }()
	floor := after
	if !complete {
		if err := s.read(ctx, false); err != nil {
			return err
		}
		// The state and the revision it is of, read together; events up to
		// that revision are in the state already.
		infos, rev, err := current()
		if err != nil {
			return err
		}
		floor = rev
		for _, info := range infos {
			if err := send(nil, info, floor); err != nil {
				return err
			}
		}
	}
	deliver := func(e locks.Event) error {
		if e.Revision <= floor {
			return nil
		}
		info, _, _ := s.table.Describe(e.Name)
		return send(&e, info, e.Revision)
	}
	for _, e := range replay {
		if err := deliver(e); err != nil {
			return err
		}
	}
	if err := started(); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.bg.Done():
			return errShuttingDown
		case <-sub.lost:
			return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("the watch lost events (it fell behind, or this node caught up from a snapshot); resume with after_revision"))
		case e := <-sub.c:
			if err := deliver(e); err != nil {
				return err
			}
		}
	}
}
