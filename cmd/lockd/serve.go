package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
	"github.com/lockd-io/lockd/locks"
	"github.com/lockd-io/lockd/node"
	"github.com/lockd-io/lockd/server"
	"github.com/lockd-io/lockd/store"
	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

type serveConfig struct {
	name            string
	dataDir         string
	listen          string
	advertise       string
	initialCluster  string
	heartbeat       time.Duration
	electionTimeout time.Duration
	snapshotEntries uint64
	snapshotBytes   string
	logLevel        string
	logFormat       string
	shutdownTimeout time.Duration
	pprof           bool
	auditLog        string
	memoryLimit     string
	join            string
	security        securityFlags

	// faults, set only by in-process tests, replaces the fault injection
	// of the build.
	faults node.Faults
	// compactionMargin, set only by tests, keeps fewer entries below a
	// snapshot than the node's default.
	compactionMargin uint64
}

func serveFlags(c *serveConfig, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.name, "name", "default", "this member's name, unique in the cluster")
	fs.StringVar(&c.dataDir, "data-dir", "lockd-data", "directory of the node's raft log and snapshots")
	fs.StringVar(&c.listen, "listen", "127.0.0.1:7070", "address to serve clients and peers on")
	fs.StringVar(&c.advertise, "advertise-url", "", "URL peers and clients reach this node at (default http://LISTEN)")
	fs.StringVar(&c.join, "join", "", "URLs (comma-separated) of members of a running cluster to join, when the data dir is empty (add this member with lockd member add first)")
	fs.StringVar(&c.initialCluster, "initial-cluster", "", "every member of a new cluster as NAME=URL,… (default: this node alone)")
	fs.DurationVar(&c.heartbeat, "heartbeat-interval", 100*time.Millisecond, "raft heartbeat interval")
	fs.DurationVar(&c.electionTimeout, "election-timeout", time.Second, "raft election timeout (at least 3 heartbeats)")
	fs.Uint64Var(&c.snapshotEntries, "snapshot-entries", 10000, "applied entries between snapshots")
	fs.StringVar(&c.snapshotBytes, "snapshot-bytes", "64MiB", "bytes of applied entries between snapshots, whichever of the two comes first; half as much is the most kept below a snapshot")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "auto", "json, console, or auto (console on a terminal)")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long SIGTERM waits for leadership handover and requests in flight")
	fs.StringVar(&c.auditLog, "audit-log", "", "append a JSON line per grant, release, lease end and force release to this file (- for stderr; default none)")
	fs.StringVar(&c.memoryLimit, "memory-limit", "", "soft limit on the Go heap, such as 900MiB or 2GiB, that the garbage collector works to stay under (default: none, or $GOMEMLIMIT)")
	fs.BoolVar(&c.pprof, "pprof", false, "serve Go's profiler at /debug/pprof/ (with --token-file it needs an admin token; without, use it only on trusted networks)")
	fs.StringVar(&c.security.certFile, "cert-file", "", "this node's TLS certificate (PEM), served to clients and peers and shown to peers; turns TLS on (URLs become https://)")
	fs.StringVar(&c.security.keyFile, "key-file", "", "the private key of --cert-file (PEM)")
	fs.StringVar(&c.security.peerCAFile, "peer-ca-file", "", "CA certificates (PEM) that directly sign the members' certificates (this node's too): only their holders may send raft traffic; required with TLS")
	fs.StringVar(&c.security.clientCAFile, "client-ca-file", "", "CA certificates (PEM) that sign client certificates; when set, every client must present one (mutual TLS)")
	fs.StringVar(&c.security.tokenFile, "token-file", "", "bearer tokens, one per line: NAME ROLE PREFIXES SECRET; when set, every call needs one (SIGHUP reloads it and the certificate)")
	return fs
}

func serve(args []string, stderr io.Writer) error {
	var c serveConfig
	fs := serveFlags(&c, stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	log, err := newLogger(c.logLevel, c.logFormat, stderr)
	if err != nil {
		return usageError{err}
	}
	if c.memoryLimit != "" {
		limit, err := parseBytes(c.memoryLimit)
		if err != nil {
			return usageError{fmt.Errorf("--memory-limit: %w", err)}
		}
		debug.SetMemoryLimit(limit)
	}
	if c.advertise == "" {
		scheme := "http://"
		if c.security.certFile != "" {
			scheme = "https://"
		}
		c.advertise = scheme + c.listen
	}
	c.advertise = strings.TrimRight(c.advertise, "/")
	if c.initialCluster == "" {
		c.initialCluster = c.name + "=" + c.advertise
	}
	peers, err := node.ParseInitialCluster(c.initialCluster)
	if err != nil {
		return usageError{err}
	}

	in, err := start(c, peers, log)
	if err != nil {
		return err
	}
	defer in.close()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				in.reload()
			case <-in.quit:
				return
			}
		}
	}()
	select {
	case s := <-sig:
		log.Info().Stringer("signal", s).Msg("draining")
	case err := <-in.serveErr:
		return fmt.Errorf("serving: %w", err)
	case <-in.node.Done():
		return errors.New("raft node stopped; see the log above")
	case <-in.removed:
		log.Warn().Msg("removed from the cluster; stopping")
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer cancel()
	in.drain(ctx)
	log.Info().Msg("stopped")
	return nil
}

// instance is one running lockd node: store, raft node, API and HTTP server.
type instance struct {
	log      zerolog.Logger
	ln       net.Listener
	store    *store.Store
	node     *node.Node
	api      *server.Server
	srv      *http.Server
	sec      *security
	audit    io.Closer
	serveErr chan error
	// handover bounds the wait for a leadership transfer at shutdown.
	handover time.Duration
	// removed is closed once this member knows it was removed from the
	// cluster; quit stops the goroutine that watches for it.
	removed  chan struct{}
	quit     chan struct{}
	quitOnce sync.Once
	// peers are the members this node started with: whom to ask whether it
	// was removed when its own member table is empty (a member removed
	// before it caught up).
	peers   []node.Peer
	dataDir string
}

// start opens the data dir, starts the raft node and serves the API and the
// peer endpoints on one listener.
func start(c serveConfig, peers []node.Peer, log zerolog.Logger) (_ *instance, err error) {
	in := &instance{log: log, serveErr: make(chan error, 1), handover: 2 * c.electionTimeout,
		removed: make(chan struct{}), quit: make(chan struct{})}
	defer func() {
		if err != nil {
			in.close()
		}
	}()
	urls := []string{c.advertise}
	for _, p := range peers {
		urls = append(urls, p.URL)
	}
	joinURLs := splitList(c.join)
	urls = append(urls, joinURLs...)
	if in.sec, err = loadSecurity(c.security, urls); err != nil {
		return nil, usageError{err}
	}
	if why, err := os.ReadFile(filepath.Join(c.dataDir, removedMarker)); err == nil {
		return nil, fmt.Errorf("data dir %s belongs to a member removed from its cluster (%s); to rejoin, start a new member with an empty data dir: lockd member add, then lockd serve --join", c.dataDir, strings.TrimSpace(string(why)))
	}
	if in.ln, err = net.Listen("tcp", c.listen); err != nil {
		return nil, err
	}
	in.ln = bufferedListener{in.ln}
	if in.store, err = store.Open(c.dataDir, store.Options{Logger: log.With().Str("component", "store").Logger()}); err != nil {
		return nil, fmt.Errorf("opening data dir %s: %w", c.dataDir, err)
	}
	var join bool
	var clusterID uint64
	if c.join != "" {
		if join, err = storeEmpty(in.store); err != nil {
			return nil, err
		}
		if join {
			if peers, clusterID, err = joinInfo(joinURLs, c.name, c.advertise, in.sec); err != nil {
				return nil, err
			}
		}
	}
	var snapshotBytes int64
	if c.snapshotBytes != "" {
		if snapshotBytes, err = parseBytes(c.snapshotBytes); err != nil || snapshotBytes < 1<<20 {
			return nil, usageError{fmt.Errorf("--snapshot-bytes %q: want a size of at least 1MiB, such as 64MiB", c.snapshotBytes)}
		}
	}
	mux := http.NewServeMux()
	reg := newRegistry()
	faults := faultInjection(mux)
	if c.faults != nil {
		faults = c.faults
	}
	table := locks.NewTable()
	in.node, err = node.Start(node.Config{
		Name:              c.name,
		InitialCluster:    peers,
		Join:              join,
		ClusterID:         clusterID,
		Store:             in.store,
		StateMachine:      table,
		HeartbeatInterval: c.heartbeat,
		ElectionTimeout:   c.electionTimeout,
		SnapshotEntries:   c.snapshotEntries,
		SnapshotBytes:     uint64(snapshotBytes),
		CompactionMargin:  c.compactionMargin,
		Faults:            faults,
		PeerTLS:           in.sec.peerTLS(),
		Logger:            log.With().Str("component", "node").Logger(),
		Metrics:           reg,
	})
	if err != nil {
		return nil, err
	}
	var audit *zerolog.Logger
	if audit, in.audit, err = openAudit(c.auditLog, log); err != nil {
		return nil, err
	}
	in.api = server.New(server.Config{
		Raft:    raftAdapter{in.node},
		Table:   table,
		Cluster: clusterAdapter{in.node},
		MinTTL:  c.electionTimeout,
		Tick:    c.heartbeat / 2,
		Logger:  log.With().Str("component", "server").Logger(),
		Metrics: reg,
		Audit:   audit,

		Security:   in.sec.serverSecurity(),
		HTTPClient: in.sec.apiHTTPClient(),
	})
	in.api.Register(mux)
	mux.Handle(node.PeerPathPrefix, in.sec.requireMember(in.node.PeerHandler()))
	handleOps(mux, reg, in.node)
	if c.pprof {
		for path, h := range map[string]http.HandlerFunc{
			"/debug/pprof/":        pprof.Index,
			"/debug/pprof/cmdline": pprof.Cmdline,
			"/debug/pprof/profile": pprof.Profile,
			"/debug/pprof/symbol":  pprof.Symbol,
			"/debug/pprof/trace":   pprof.Trace,
		} {
			mux.Handle(path, in.sec.requireAdmin(h))
		}
		runtime.SetMutexProfileFraction(100)
		runtime.SetBlockProfileRate(int(100 * time.Microsecond))
	}
	in.srv = &http.Server{
		Handler: mux,
		// TLS handshake failures (a peer or client with a certificate
		// this node does not trust) are worth a line.
		ErrorLog:          stdLogger(log.With().Str("component", "http").Logger()),
		Protocols:         new(http.Protocols),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	in.srv.Protocols.SetHTTP1(true)
	if in.sec.tlsOn() {
		in.srv.Protocols.SetHTTP2(true)
		in.srv.TLSConfig = in.sec.serverTLS()
		go func() { in.serveErr <- in.srv.ServeTLS(in.ln, "", "") }()
	} else {
		in.srv.Protocols.SetUnencryptedHTTP2(true)
		go func() { in.serveErr <- in.srv.Serve(in.ln) }()
	}
	in.sec.log(log)
	in.peers = peers
	in.dataDir = c.dataDir
	go in.watchRemoval(c.name, c.electionTimeout)
	log.Info().Str("name", c.name).Str("listen", in.ln.Addr().String()).Str("data-dir", c.dataDir).
		Str("initial-cluster", c.initialCluster).Msg("lockd serving")
	return in, nil
}

// reload reads the certificate and the token file again (SIGHUP).
func (in *instance) reload() {
	if err := in.sec.reload(); err != nil {
		in.log.Error().Err(err).Msg("reload failed; still serving with the certificate and tokens loaded before")
		return
	}
	in.api.ReauthorizeStreams()
	in.log.Info().Msg("reloaded the certificate and tokens")
}

// drain stops the node gracefully: it hands raft leadership over so the
// cluster does not wait out an election timeout, ends the API's streams and
// background work, stops the node, and finishes the requests in flight.
func (in *instance) drain(ctx context.Context) {
	tctx, cancel := context.WithTimeout(ctx, in.handover)
	if err := in.node.TransferLeadership(tctx); err != nil {
		in.log.Warn().Err(err).Msg("leadership handover failed")
	}
	cancel()
	in.api.Close()
	// Stopping the node ends the peer streams, which would otherwise keep
	// Shutdown waiting; client requests still in flight fail fast with
	// Unavailable and their clients retry on another node.
	in.node.Stop()
	if err := in.srv.Shutdown(ctx); err != nil {
		in.log.Warn().Err(err).Msg("requests still in flight at shutdown")
	}
}

// close stops everything at once, in the reverse order of start.
func (in *instance) close() {
	in.quitOnce.Do(func() { close(in.quit) })
	if in.srv != nil {
		in.srv.Close()
	}
	if in.api != nil {
		in.api.Close()
	}
	if in.node != nil {
		in.node.Stop()
	}
	if in.store != nil {
		in.store.Close()
	}
	if in.audit != nil {
		in.audit.Close()
	}
	if in.ln != nil {
		in.ln.Close()
	}
}

// stdLogger routes the standard library's log lines (the HTTP server's)
// through zerolog, as warnings.
func stdLogger(log zerolog.Logger) *stdlog.Logger {
	return stdlog.New(zerologWriter{log}, "", 0)
}

type zerologWriter struct{ log zerolog.Logger }

func (w zerologWriter) Write(p []byte) (int, error) {
	w.log.Warn().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

func newLogger(level, format string, w io.Writer) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Logger{}, fmt.Errorf("unknown log level %q", level)
	}
	switch format {
	case "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	case "auto":
		if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
		}
	default:
		return zerolog.Logger{}, fmt.Errorf("unknown log format %q", format)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// parseBytes reads a size such as 512MiB, 2GiB, 1.5GB or 1048576.
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	num, mult := s, 1.0
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a size (such as 900MiB or 2GiB)", s)
	}
	return int64(v * mult), nil
}

func storeEmpty(st *store.Store) (bool, error) {
	last, err := st.LastIndex()
	if err != nil {
		return false, err
	}
	snap, err := st.Snapshot()
	if err != nil {
		return false, err
	}
	return last == 0 && snap.GetMetadata().GetIndex() == 0, nil
}

// joinPatience is how long a joining member keeps asking the cluster for
// its membership while nobody answers or it is not listed yet.
const joinPatience = 30 * time.Second

// joinInfo asks a running cluster, through any of memberURLs, for its id
// and members, for a new member added as name. It asks the leader when it
// can: a follower may not have applied the change that added the member
// yet. While no member answers, or the member is not listed, it asks again
// for up to joinPatience: the cluster may be electing a leader, or still
// committing the change.
func joinInfo(memberURLs []string, name, advertise string, sec *security) ([]node.Peer, uint64, error) {
	c, err := lockd.New(memberURLs, sec.clientOptions()...)
	if err != nil {
		return nil, 0, err
	}
	defer c.Close()
	deadline := time.Now().Add(joinPatience)
	for {
		peers, id, final, err := askToJoin(c, memberURLs, name, advertise, sec)
		switch {
		case err == nil || final:
			return peers, id, err
		case time.Now().After(deadline):
			return nil, 0, fmt.Errorf("%w (asked for %v)", err, joinPatience)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// askToJoin is one try of joinInfo, through c; final says that trying
// again cannot help.
func askToJoin(c *lockd.Client, memberURLs []string, name, advertise string, sec *security) (_ []node.Peer, _ uint64, final bool, _ error) {
	via := strings.Join(memberURLs, ",")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		if sec.tlsOn() {
			// HTTP/2 hides why a TLS connection failed; ask once more over
			// HTTP/1.1 to tell the operator (a certificate the member does
			// not trust, usually).
			err = fmt.Errorf("%w (TLS check: %v)", err, probeTLS(memberURLs[0], sec.peerTLS()))
		}
		return nil, 0, false, fmt.Errorf("joining through %s: %w", via, err)
	}
	fromLeader := st.GetState() == "leader"
	if leader := st.GetLeaderUrl(); !fromLeader && leader != "" {
		// The leader has applied the change that added this member; the
		// node that answered may not have yet. Its word counts only if it
		// still leads the same cluster.
		if lc, err := lockd.New([]string{leader}, sec.clientOptions()...); err == nil {
			if lst, err := lc.Status(ctx); err == nil && lst.GetState() == "leader" && lst.GetClusterId() == st.GetClusterId() {
				st, via, fromLeader = lst, leader, true
			}
			lc.Close()
		}
	}
	id, err := strconv.ParseUint(st.GetClusterId(), 16, 64)
	if err != nil {
		return nil, 0, true, fmt.Errorf("joining through %s: no cluster id in its status", via)
	}
	var peers []node.Peer
	found := false
	for _, m := range st.GetMembers() {
		peers = append(peers, node.Peer{Name: m.GetName(), URL: m.GetUrl()})
		if m.GetName() == name {
			found = true
			if m.GetUrl() != advertise {
				// Final on the leader's word; a follower's may be stale.
				return nil, 0, fromLeader, fmt.Errorf("member %q was added with URL %s, but this node advertises %s", name, m.GetUrl(), advertise)
			}
		}
	}
	if !found {
		return nil, 0, false, fmt.Errorf("%q is not a member of the cluster at %s; add it first: lockd member add %s --peer-url %s --learner", name, via, name, advertise)
	}
	return peers, id, false, nil
}

// probeTLS makes one HTTPS request to url and returns why it failed.
func probeTLS(url string, cfg *tls.Config) error {
	tr := &http.Transport{TLSClientConfig: cfg.Clone()}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := hc.Get(strings.TrimRight(url, "/") + "/healthz")
	if err != nil {
		return err
	}
	resp.Body.Close()
	return fmt.Errorf("the connection works (%s)", resp.Status)
}

// watchRemoval closes in.removed once this member has been removed from the
// cluster: when it applies its own removal, or, since a removed member may
// never learn that its removal was committed (the leader stops talking to
// it), when it has known no leader, or not heard from the one it knows
// (a learner never campaigns, so it never forgets a leader), for three
// election timeouts and the leader no longer lists it.
func (in *instance) watchRemoval(name string, electionTimeout time.Duration) {
	tick := time.NewTicker(electionTimeout)
	defer tick.Stop()
	var leaderless time.Time
	for {
		select {
		case <-in.quit:
			return
		case <-in.node.Removed():
			// Only the member's own log is proof enough to mark the data
			// dir for good.
			in.markRemoved(name, "it applied its own removal")
			return
		case <-tick.C:
		}
		if in.node.Leader() != 0 && in.node.LeaderSilence() < electionTimeout {
			leaderless = time.Time{}
			continue
		}
		if leaderless.IsZero() {
			leaderless = time.Now()
		}
		if time.Since(leaderless) < 3*electionTimeout {
			continue
		}
		if in.removedPerPeers(name, electionTimeout) {
			// The leader's word: this node stops, but does not mark its
			// data dir, in case that leader was stale; if it was, a restart
			// finds the member still in the cluster.
			close(in.removed)
			return
		}
	}
}

// removedMarker is the file in a data dir that says its member was
// removed: a removed member must not come back with its old identity and
// log, so lockd serve refuses the data dir from then on.
const removedMarker = "REMOVED"

// markRemoved writes the marker and closes in.removed.
func (in *instance) markRemoved(name, why string) {
	select {
	case <-in.quit:
		return // closed meanwhile; its data dir may be going away
	default:
	}
	text := fmt.Sprintf("member %s removed at %s: %s\n", name, time.Now().UTC().Format(time.RFC3339), why)
	if err := os.WriteFile(filepath.Join(in.dataDir, removedMarker), []byte(text), 0o644); err != nil {
		in.log.Error().Err(err).Msg("could not mark the data dir as removed")
	}
	close(in.removed)
}

// removedPerPeers asks the other members this node knows whether it is
// still a member; only the leader's answer counts: a follower may not have
// applied the change that added this member yet, and a wrong "removed" is
// for good (markRemoved).
func (in *instance) removedPerPeers(name string, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	st, err := in.node.Status(ctx)
	if err != nil {
		return false
	}
	urls := map[string]bool{}
	for _, m := range st.Members {
		if m.Name != name {
			urls[m.URL] = true
		}
	}
	for _, p := range in.peers {
		if p.Name != name {
			urls[p.URL] = true
		}
	}
	for u := range urls {
		c, err := lockd.New([]string{u}, in.sec.clientOptions()...)
		if err != nil {
			continue
		}
		pst, err := c.Status(ctx)
		c.Close()
		if err != nil || pst.GetState() != "leader" || pst.GetClusterId() != strconv.FormatUint(st.ClusterID, 16) {
			continue
		}
		for _, pm := range pst.GetMembers() {
			if pm.GetName() == name {
				return false
			}
		}
		return true
	}
	return false
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
