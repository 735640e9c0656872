package server

import (
	"context"
	"fmt"
	"net/http"
	"runtime/debug"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/lockd-io/lockd/proto/lockd/v1/lockdv1connect"
	"github.com/rs/zerolog"
)

// MaxRequestBytes bounds every request message.
const MaxRequestBytes = 1 << 20

// Config is what the handlers are built from.
type Config struct {
	Cluster Cluster
	Logger  zerolog.Logger
}

// Register mounts every service on mux.
func Register(mux *http.ServeMux, cfg Config) {
	opts := []connect.HandlerOption{
		connect.WithReadMaxBytes(MaxRequestBytes),
		connect.WithRecover(func(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
			cfg.Logger.Error().Str("procedure", spec.Procedure).Interface("panic", p).Bytes("stack", debug.Stack()).Msg("handler panicked")
			return connect.NewError(connect.CodeInternal, fmt.Errorf("internal error in %s", spec.Procedure))
		}),
	}
	mux.Handle(lockdv1connect.NewClusterServiceHandler(&clusterHandler{cluster: cfg.Cluster}, opts...))

	services := []string{lockdv1connect.ClusterServiceName}
	mux.Handle(grpchealth.NewHandler(grpchealth.NewStaticChecker(services...)))
	reflector := grpcreflect.NewStaticReflector(services...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
}
