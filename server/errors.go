package server

import (
	"context"
	"errors"

	"connectrpc.com/connect"
)

// ErrUnavailable marks errors of a backend that cannot serve right now (no
// leader, no quorum, shutting down). Backends wrap it; it maps to
// CodeUnavailable.
var ErrUnavailable = errors.New("unavailable")

// toConnect maps a domain error to the Connect error a client sees. This is
// the one table of such mappings: handlers return what it gives.
func toConnect(err error) error {
	var ce *connect.Error
	switch {
	case errors.As(err, &ce):
		return ce
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
