package lockd

import (
	"context"
	"errors"
	"testing"

	"connectrpc.com/connect"
)

// What a call may be retried after: a node that could not serve it, or a
// broken connection, including one that surfaces as a cancellation the
// caller did not ask for; never an answer, nor the caller's own
// cancellation.
func TestRetryable(t *testing.T) {
	live := context.Background()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		ctx  context.Context
		err  error
		want bool
	}{
		{live, connect.NewError(connect.CodeUnavailable, errors.New("no leader")), true},
		{live, connect.NewError(connect.CodeCanceled, errors.New("connection reset by peer")), true},
		{done, connect.NewError(connect.CodeCanceled, context.Canceled), false},
		{live, connect.NewError(connect.CodeUnknown, errors.New("EOF")), true},
		{live, connect.NewError(connect.CodeFailedPrecondition, errors.New("not the holder")), false},
		{live, connect.NewError(connect.CodeNotFound, errors.New("no such lease")), false},
		{live, errors.New("not a connect error"), false},
	} {
		if got := retryable(tc.ctx, tc.err); got != tc.want {
			t.Errorf("retryable(ctx alive=%v, %v) = %v, want %v", tc.ctx.Err() == nil, tc.err, got, tc.want)
		}
	}
}
