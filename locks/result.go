package locks

import (
	"time"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
)

// Result is what applying a command produced.
type Result struct {
	// Err is set when the command failed; it then changed nothing.
	Err *Error
	// Revision is the table's revision after the command.
	Revision uint64
	// Granted: the acquire holds its locks; Tokens has one token per lock,
	// in the order they were named.
	Granted bool
	Tokens  []uint64
	// WaiterID identifies the acquire's place in the queues (its queued
	// revision); Cancel takes it.
	WaiterID uint64
	// Position is the waiter's 1-based place in its first lock's queue.
	Position uint32
	// LeaseID is the lease a GrantLease created or a lease command ended.
	LeaseID uint64
	// Count is how many waiters or grants a Cancel or ForceRelease removed.
	Count uint32
	// Ignored: the command was stale (an expiry from an old term, the end of
	// a delay that already ended, the cancel of a try of a request that a
	// later try superseded) and changed nothing.
	Ignored bool
	// Duplicate: the request id was seen before; this is the first result.
	Duplicate bool
}

func (r *Result) toProto() *statev1.Result {
	p := &statev1.Result{
		Revision: r.Revision,
		Granted:  r.Granted,
		Tokens:   append([]uint64(nil), r.Tokens...),
		WaiterId: r.WaiterID,
		Position: r.Position,
		LeaseId:  r.LeaseID,
		Count:    r.Count,
	}
	if r.Err != nil {
		p.Code, p.Message = int32(r.Err.Code), r.Err.Msg
	}
	return p
}

func resultFromProto(p *statev1.Result) *Result {
	r := &Result{
		Revision: p.GetRevision(),
		Granted:  p.GetGranted(),
		Tokens:   append([]uint64(nil), p.GetTokens()...),
		WaiterID: p.GetWaiterId(),
		Position: p.GetPosition(),
		LeaseID:  p.GetLeaseId(),
		Count:    p.GetCount(),
	}
	if p.GetCode() != 0 {
		r.Err = &Error{Code: Code(p.GetCode()), Msg: p.GetMessage()}
	}
	return r
}

// EventType says what happened.
type EventType int

// The event types.
const (
	LeaseGranted EventType = iota + 1
	LeaseEnded
	Queued
	Withdrawn
	Granted
	Released      // by the holder, by its lease's end, or by a withdrawal
	ForceReleased // by an admin
	Delayed
	DelayEnded
	ValueSet
	// Reset: the table was replaced by a snapshot (a follower catching up);
	// the events between the old state and the new one are not available.
	Reset
)

func (e EventType) String() string {
	switch e {
	case LeaseGranted:
		return "lease-granted"
	case LeaseEnded:
		return "lease-ended"
	case Queued:
		return "queued"
	case Withdrawn:
		return "withdrawn"
	case Granted:
		return "granted"
	case Released:
		return "released"
	case ForceReleased:
		return "force-released"
	case Delayed:
		return "delayed"
	case DelayEnded:
		return "delay-ended"
	case ValueSet:
		return "value-set"
	case Reset:
		return "reset"
	default:
		return "unknown"
	}
}

// Event is one change to the table, in revision order.
type Event struct {
	Type     EventType
	Revision uint64
	Name     string // the lock; empty for lease events
	LeaseID  uint64
	Token    uint64
	WaiterID uint64
	// Reason: "released", "revoked", "expired", "withdrawn", or an admin's
	// reason for a force release or delay.
	Reason string
	// TTL of a granted lease.
	TTL time.Duration
	// Delay and DelayRevision of a started lock-delay: the leader ends it
	// with EndDelay(name, DelayRevision) once Delay has passed.
	Delay         time.Duration
	DelayRevision uint64
	// By is the principal (a token's name) whose command caused the event:
	// the releaser's for the grant a release hands on, the admin's for a
	// force release; "" without authentication and for expiries.
	By string
}
