package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/lockd-io/lockd/locks"
	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"github.com/lockd-io/lockd/proto/lockd/v1/lockdv1connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

// compressMinBytes is the smallest answer worth gzipping, when the client
// accepts gzip: lists and large Describes are, grants and releases are not.
const compressMinBytes = 4 << 10

// MaxRequestBytes bounds every request message.
const MaxRequestBytes = 1 << 20

// Raft is the replicated log as the server uses it.
type Raft interface {
	// Propose replicates an encoded command and returns the table's result
	// once it is applied on this node.
	Propose(ctx context.Context, cmd []byte) (any, error)
	// ReadIndex returns once this node has applied everything committed
	// before the call, as confirmed by a quorum.
	ReadIndex(ctx context.Context) error
	// Leadership reports whether this node leads, its term, and whether it
	// has seen a quorum within an election timeout.
	Leadership() (leader bool, term uint64, quorum bool)
	// LeaderURL is the leader's URL, "" if none is known.
	LeaderURL() string
}

// Config is what a Server is built from.
type Config struct {
	Raft    Raft
	Table   *locks.Table
	Cluster Cluster
	// MinTTL is the shortest lease TTL granted: the election timeout, so a
	// lease cannot expire during an ordinary failover.
	MinTTL time.Duration
	// Tick is how often the leader checks lease deadlines and delays.
	Tick time.Duration
	// ProposeTimeout bounds how long a write waits to be applied before it
	// is answered Unavailable with its outcome unknown. Default 5s.
	ProposeTimeout time.Duration
	Logger         zerolog.Logger
	// Metrics, when set, receives the server's Prometheus metrics.
	Metrics prometheus.Registerer
	// Audit, when set, gets one line per grant, release, expiry and force
	// release applied on this node.
	Audit *zerolog.Logger
	// Security decides who may call what; the zero value lets everyone do
	// everything.
	Security Security
	// HTTPClient reaches the other members' APIs (to forward keep-alives
	// to the leader). Default: plain HTTP/2 (h2c).
	HTTPClient *http.Client
}

// Server serves the lockd API.
type Server struct {
	cfg     Config
	raft    Raft
	table   *locks.Table
	hub     *hub
	leaders *leaderLog // each election's leader changes, for Observe
	keeper  *keeper
	metrics *metrics
	log     zerolog.Logger

	forwardMu sync.Mutex
	forwards  map[string]lockdv1connect.LeaseServiceClient
	hc        *http.Client

	// bg is the context of work that outlives a request (withdrawals).
	bg     context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	bgMu   sync.Mutex // orders wg.Add with Close's wg.Wait
	closed bool

	// authGen ends when the credentials are reloaded, and with it every
	// stream a token opened (ReauthorizeStreams).
	authMu  sync.Mutex
	authGen context.Context
	authEnd context.CancelFunc
}

// New builds a server and subscribes it to the table's events.
func New(cfg Config) *Server {
	if cfg.Tick == 0 {
		cfg.Tick = 50 * time.Millisecond
	}
	if cfg.ProposeTimeout == 0 {
		cfg.ProposeTimeout = 5 * time.Second
	}
	if cfg.HTTPClient == nil {
		tr := &http.Transport{Protocols: new(http.Protocols)}
		tr.Protocols.SetUnencryptedHTTP2(true)
		cfg.HTTPClient = &http.Client{Transport: tr}
	}
	s := &Server{
		cfg:      cfg,
		raft:     cfg.Raft,
		table:    cfg.Table,
		hub:      newHub(),
		log:      cfg.Logger,
		forwards: map[string]lockdv1connect.LeaseServiceClient{},
		hc:       cfg.HTTPClient,
	}
	s.metrics = newMetrics(cfg.Table, cfg.Metrics)
	s.keeper = newKeeper(cfg.Raft, cfg.Table, cfg.Tick, cfg.Logger.With().Str("component", "keeper").Logger())
	s.bg, s.cancel = context.WithCancel(context.Background())
	s.authGen, s.authEnd = context.WithCancel(context.Background())
	s.leaders = newLeaderLog(cfg.Table)
	cfg.Table.Observe(func(events []locks.Event) {
		s.leaders.observe(events, cfg.Table, s.hub.oldest()) // before the hub: see leaderLog
		s.hub.publish(events)
		s.keeper.observe(events)
		s.metrics.observe(events)
		if cfg.Audit != nil {
			audit(cfg.Audit, events)
		}
	})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.keeper.run(s.bg)
	}()
	return s
}

// Close stops the leader's background work and waits for it.
func (s *Server) Close() {
	s.bgMu.Lock()
	s.closed = true
	s.bgMu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// goBackground runs f on a goroutine that Close waits for, unless the
// server is closed (then the work is dropped: a waiter left queued goes with
// its lease).
func (s *Server) goBackground(f func()) {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.closed {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// Register mounts every service on mux.
func (s *Server) Register(mux *http.ServeMux) {
	opts := []connect.HandlerOption{
		connect.WithReadMaxBytes(MaxRequestBytes),
		// Answers are small: compressing them costs more CPU (a gzip
		// writer's reset alone is ~20µs) than it saves on the wire.
		connect.WithCompressMinBytes(compressMinBytes),
		// Metrics first, so refused calls are counted too.
		connect.WithInterceptors(s.metrics.interceptor(), authInterceptor{s}),
		connect.WithRecover(func(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
			s.log.Error().Str("procedure", spec.Procedure).Interface("panic", p).Bytes("stack", debug.Stack()).Msg("handler panicked")
			return connect.NewError(connect.CodeInternal, fmt.Errorf("internal error in %s", spec.Procedure))
		}),
	}
	handle := func(path string, h http.Handler) { mux.Handle(path, withTLSState(h)) }
	handle(lockdv1connect.NewClusterServiceHandler(&clusterHandler{cluster: s.cfg.Cluster, s: s}, opts...))
	handle(lockdv1connect.NewLeaseServiceHandler(&leaseHandler{s}, opts...))
	handle(lockdv1connect.NewLockServiceHandler(&lockHandler{s}, opts...))
	handle(lockdv1connect.NewElectionServiceHandler(&electionHandler{s}, opts...))

	services := []string{
		lockdv1connect.ClusterServiceName,
		lockdv1connect.LeaseServiceName,
		lockdv1connect.LockServiceName,
		lockdv1connect.ElectionServiceName,
	}
	mux.Handle(grpchealth.NewHandler(grpchealth.NewStaticChecker(services...)))
	reflector := grpcreflect.NewStaticReflector(services...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
}

// propose replicates cmd and returns the table's result; a command the
// table rejected comes back as its *locks.Error.
func (s *Server) propose(ctx context.Context, cmd *statev1.Command) (*locks.Result, error) {
	cmd.ProposedUnixNano = time.Now().UnixNano()
	if p := principalFrom(ctx); p != nil {
		cmd.Principal, cmd.Admin = p.Name, p.Role == RoleAdmin
	}
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	// Bounded on this side too: raft drops some proposals without a word
	// (a forwarded one during a leader change, say), and a caller without a
	// deadline would wait forever.
	pctx, cancel := context.WithTimeout(ctx, s.cfg.ProposeTimeout)
	defer cancel()
	v, err := s.raft.Propose(pctx, data)
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w: %w", ErrUnavailable, errOutcomeUnknown)
		}
		return nil, s.unavailable(err)
	}
	res, ok := v.(*locks.Result)
	if !ok || res == nil {
		return nil, fmt.Errorf("unexpected apply result %T", v)
	}
	if res.Err != nil {
		return res, res.Err
	}
	return res, nil
}

// read makes the table current for a linearizable read, unless the caller
// asked for a serializable one.
func (s *Server) read(ctx context.Context, serializable bool) error {
	if serializable {
		return nil
	}
	if err := s.raft.ReadIndex(ctx); err != nil {
		return s.unavailable(err)
	}
	return nil
}

// unavailable turns an error of the raft layer into the Connect error the
// client sees, naming the leader when one is known.
func (s *Server) unavailable(err error) error {
	ce := toConnect(err)
	if cerr, ok := ce.(*connect.Error); ok && cerr.Code() == connect.CodeUnavailable {
		if u := s.raft.LeaderURL(); u != "" {
			cerr.Meta().Set(LeaderHeader, u)
		}
	}
	return ce
}

func modeOf(m locks.Mode) lockdv1.Mode { return lockdv1.Mode(m) }
