package main

import (
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/lockd-io/lockd/node"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// newRegistry is the registry behind /metrics: lockd's own metrics, and
// the Go runtime's and the process's.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// handleOps mounts the operator's endpoints: /metrics (Prometheus text),
// /healthz (the process serves HTTP) and /readyz (the node can serve
// clients: it knows a leader, a leader has its quorum, and it is not
// replaying its log; 503 with the reason otherwise).
func handleOps(mux *http.ServeMux, reg *prometheus.Registry, n *node.Node) {
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := n.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
}

// openAudit opens the audit log: "" for none, "-" for the main log (at
// info level whatever the log level), or a file that lines are appended to.
func openAudit(path string, log zerolog.Logger) (*zerolog.Logger, io.Closer, error) {
	switch path {
	case "":
		return nil, nopCloser{}, nil
	case "-":
		l := log.Level(zerolog.InfoLevel).With().Str("component", "audit").Logger()
		return &l, nopCloser{}, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("opening the audit log: %w", err)
	}
	l := zerolog.New(f).With().Timestamp().Logger()
	return &l, f, nil
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }
