package server

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"github.com/lockd-io/lockd/election"
	"github.com/lockd-io/lockd/locks"
)

// ErrUnavailable marks errors of a backend that cannot serve right now (no
// leader, no quorum, shutting down). Backends wrap it; it maps to
// CodeUnavailable.
var ErrUnavailable = errors.New("unavailable")

// ErrNotProposed marks errors of a backend whose write was certainly not
// proposed (no leader to take it): it had no effect, and can be retried as
// is. Other failures of a write leave its outcome unknown.
var ErrNotProposed = errors.New("not proposed")

// errOutcomeUnknown: a write was not applied in time; it may still be.
var errOutcomeUnknown = errors.New("the write was not applied in time (no quorum, or a leader change); its outcome is unknown; retry it with the same request id")

// errShuttingDown ends the streams and waits of a node that drains.
var errShuttingDown = shared(connect.NewError(connect.CodeUnavailable, errors.New("this node is shutting down; retry on another node")))

// errDetached ends the waits of a Pipeline stream that ended without its
// client giving up (the credentials were reloaded): the waiters stay
// queued for the retries to find.
var errDetached = shared(connect.NewError(connect.CodeUnavailable, errors.New("the call's stream ended (the node's credentials were reloaded); retry with the same request id")))

// shared readies an error that many goroutines return: its metadata is
// made now, since Meta makes it on first use, which is a write.
func shared(err *connect.Error) *connect.Error {
	err.Meta()
	return err
}

// LeaderHeader carries the leader's URL on Unavailable errors, when known,
// so clients can go there directly.
const LeaderHeader = "Lockd-Leader"

// codes maps the lock table's error codes to Connect codes.
var codes = map[locks.Code]connect.Code{
	locks.Invalid:   connect.CodeInvalidArgument,
	locks.NotFound:  connect.CodeNotFound,
	locks.NotHolder: connect.CodeFailedPrecondition,
	locks.Conflict:  connect.CodeFailedPrecondition,
	locks.Quota:     connect.CodeResourceExhausted,
	locks.Aborted:   connect.CodeAborted,
	locks.Denied:    connect.CodePermissionDenied,
}

// toConnect maps a domain error to the Connect error a client sees. This is
// the one table of such mappings: handlers return what it gives.
func toConnect(err error) error {
	var (
		ce *connect.Error
		le *locks.Error
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce):
		return ce
	case errors.As(err, &le):
		code, ok := codes[le.Code]
		if !ok {
			code = connect.CodeInternal
		}
		return connect.NewError(code, le)
	case errors.Is(err, election.ErrNotCandidate):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, ErrUnavailable):
		return connect.NewError(connect.CodeUnavailable, err)
	default:
		return connect.NewError(connect.CodeInternal, err)
	}
}

// invalid is an InvalidArgument error for a request the server rejects
// before proposing anything.
func invalid(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}
