package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

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
	logLevel        string
	logFormat       string
	shutdownTimeout time.Duration
}

func serveFlags(c *serveConfig, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.name, "name", "default", "this member's name, unique in the cluster")
	fs.StringVar(&c.dataDir, "data-dir", "lockd-data", "directory of the node's raft log and snapshots")
	fs.StringVar(&c.listen, "listen", "127.0.0.1:7070", "address to serve clients and peers on")
	fs.StringVar(&c.advertise, "advertise-url", "", "URL peers and clients reach this node at (default http://LISTEN)")
	fs.StringVar(&c.initialCluster, "initial-cluster", "", "every member of a new cluster as NAME=URL,… (default: this node alone)")
	fs.DurationVar(&c.heartbeat, "heartbeat-interval", 100*time.Millisecond, "raft heartbeat interval")
	fs.DurationVar(&c.electionTimeout, "election-timeout", time.Second, "raft election timeout (at least 3 heartbeats)")
	fs.Uint64Var(&c.snapshotEntries, "snapshot-entries", 10000, "applied entries between snapshots")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "auto", "json, console, or auto (console on a terminal)")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long SIGTERM waits for leadership handover and requests in flight")
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
	if c.advertise == "" {
		c.advertise = "http://" + c.listen
	}
	c.advertise = strings.TrimRight(c.advertise, "/")
	if c.initialCluster == "" {
		c.initialCluster = c.name + "=" + c.advertise
	}
	peers, err := node.ParseInitialCluster(c.initialCluster)
	if err != nil {
		return usageError{err}
	}

	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return err
	}
	defer ln.Close()

	st, err := store.Open(c.dataDir, store.Options{Logger: log.With().Str("component", "store").Logger()})
	if err != nil {
		return fmt.Errorf("opening data dir %s: %w", c.dataDir, err)
	}
	defer st.Close()

	table := locks.NewTable()
	n, err := node.Start(node.Config{
		Name:              c.name,
		InitialCluster:    peers,
		Store:             st,
		StateMachine:      table,
		HeartbeatInterval: c.heartbeat,
		ElectionTimeout:   c.electionTimeout,
		SnapshotEntries:   c.snapshotEntries,
		Logger:            log.With().Str("component", "node").Logger(),
	})
	if err != nil {
		return err
	}
	defer n.Stop()

	api := server.New(server.Config{
		Raft:    raftAdapter{n},
		Table:   table,
		Cluster: clusterAdapter{n},
		MinTTL:  c.electionTimeout,
		Tick:    c.heartbeat / 2,
		Logger:  log.With().Str("component", "server").Logger(),
	})
	defer api.Close()
	mux := http.NewServeMux()
	api.Register(mux)
	mux.Handle(node.PeerPathPrefix, n.PeerHandler())
	srv := &http.Server{
		Handler:           mux,
		Protocols:         new(http.Protocols),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info().Str("name", c.name).Str("listen", ln.Addr().String()).Str("data-dir", c.dataDir).
		Str("initial-cluster", c.initialCluster).Msg("lockd serving")

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	select {
	case s := <-sig:
		log.Info().Stringer("signal", s).Msg("draining")
	case err := <-serveErr:
		return fmt.Errorf("serving: %w", err)
	case <-n.Done():
		return errors.New("raft node stopped; see the log above")
	}

	// Drain: hand leadership over so the cluster does not wait out an
	// election timeout, then stop taking requests and finish those in flight.
	ctx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer cancel()
	if err := n.TransferLeadership(ctx); err != nil {
		log.Warn().Err(err).Msg("leadership handover failed")
	}
	api.Close()
	// Stopping the node ends the peer streams, which would otherwise keep
	// Shutdown waiting; client requests still in flight fail fast with
	// Unavailable and their clients retry on another node.
	n.Stop()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn().Err(err).Msg("requests still in flight at shutdown")
	}
	log.Info().Msg("stopped")
	return nil
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
