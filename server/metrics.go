package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/lockd-io/lockd/locks"
	"github.com/prometheus/client_golang/prometheus"
)

// maxNamespaceLabels bounds the namespaces that get a label of their own;
// the rest are counted under "_other", so a client that invents names
// cannot grow the metrics without bound.
const maxNamespaceLabels = 100

// nsStatsEvery is the least time between two walks of the lock table for
// the per-namespace gauges.
const nsStatsEvery = 5 * time.Second

// metrics are the server's Prometheus metrics: RPCs by procedure and code,
// the table's events by namespace, and what the table holds.
type metrics struct {
	rpc      *prometheus.HistogramVec
	streams  *prometheus.CounterVec
	grants   *prometheus.CounterVec
	releases *prometheus.CounterVec
	delays   *prometheus.CounterVec
	leases   *prometheus.CounterVec
	cancels  *prometheus.CounterVec

	mu    sync.Mutex
	named map[string]bool // namespaces with a label of their own
}

func newMetrics(table *locks.Table, reg prometheus.Registerer) *metrics {
	m := &metrics{
		rpc: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lockd_rpc_duration_seconds", Help: "Unary RPCs served, by procedure and Connect code (ok for success); a call on LockService.Pipeline counts as the procedure it stands for.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 20),
		}, []string{"procedure", "code"}),
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockd_rpc_streams_total", Help: "Streaming RPCs ended, by procedure and Connect code.",
		}, []string{"procedure", "code"}),
		grants: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockd_lock_grants_total", Help: "Grants of a lock (a multi-lock counts once per lock), by namespace.",
		}, []string{"namespace"}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockd_lock_releases_total", Help: "Ends of grants by namespace and reason: released, revoked, expired (their lease's end), withdrawn, forced.",
		}, []string{"namespace", "reason"}),
		delays: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockd_lock_delays_total", Help: "Lock-delays begun (a holder's lease expired on a lock with a delay), by namespace.",
		}, []string{"namespace"}),
		leases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockd_lease_events_total", Help: "Leases granted and ended: event granted, or ended with reason revoked or expired.",
		}, []string{"event"}),
		cancels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockd_acquire_cancels_total", Help: "Acquires this node withdrew (their callers went away, their waits ran out, or their outcome was unknown), by outcome: done, superseded (a later try of the request, a client's retry, was applied first and stands), refused (by the table: not the caller's lease), failed (could not be applied in time).",
		}, []string{"outcome"}),
		named: map[string]bool{},
	}
	if reg != nil {
		reg.MustRegister(m.rpc, m.streams, m.grants, m.releases, m.delays, m.leases, m.cancels, newTableCollector(table, m))
	}
	return m
}

// namespace is the label for a lock's namespace.
func (m *metrics) namespace(name string) string {
	ns := locks.Namespace(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.named[ns] {
		return ns
	}
	if len(m.named) < maxNamespaceLabels {
		m.named[ns] = true
		return ns
	}
	return "_other"
}

// observe counts the events of an applied command.
func (m *metrics) observe(events []locks.Event) {
	for _, e := range events {
		switch e.Type {
		case locks.Granted:
			m.grants.WithLabelValues(m.namespace(e.Name)).Inc()
		case locks.Released:
			m.releases.WithLabelValues(m.namespace(e.Name), e.Reason).Inc()
		case locks.ForceReleased:
			m.releases.WithLabelValues(m.namespace(e.Name), "forced").Inc()
		case locks.Delayed:
			m.delays.WithLabelValues(m.namespace(e.Name)).Inc()
		case locks.LeaseGranted:
			m.leases.WithLabelValues("granted").Inc()
		case locks.LeaseEnded:
			m.leases.WithLabelValues(e.Reason).Inc()
		}
	}
}

// interceptor records every RPC's duration and code.
func (m *metrics) interceptor() connect.Interceptor { return rpcMetrics{m} }

type rpcMetrics struct{ m *metrics }

func (r rpcMetrics) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		start := time.Now()
		resp, err := next(ctx, req)
		r.m.rpc.WithLabelValues(req.Spec().Procedure, codeLabel(err)).Observe(time.Since(start).Seconds())
		return resp, err
	}
}

func (r rpcMetrics) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (r rpcMetrics) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		err := next(ctx, conn)
		r.m.streams.WithLabelValues(conn.Spec().Procedure, codeLabel(err)).Inc()
		return err
	}
}

func codeLabel(err error) string {
	if err == nil {
		return "ok"
	}
	if errors.Is(err, context.Canceled) {
		return connect.CodeCanceled.String()
	}
	return connect.CodeOf(err).String()
}

// tableCollector reports what the table holds when scraped: totals each
// time, per-namespace counts from a walk of the table at most every
// nsStatsEvery.
type tableCollector struct {
	table *locks.Table
	m     *metrics

	leases, locks, grants, waiters, revision *prometheus.Desc
	nsLocks, nsGrants, nsWaiters             *prometheus.Desc

	mu     sync.Mutex
	walked time.Time
	byNS   map[string]locks.NamespaceStats
}

func newTableCollector(table *locks.Table, m *metrics) *tableCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &tableCollector{
		table:     table,
		m:         m,
		leases:    d("lockd_leases", "Leases alive."),
		locks:     d("lockd_locks", "Locks in the table (held, waited for, or delayed)."),
		grants:    d("lockd_locks_held", "Grants held (a semaphore's slots count each)."),
		waiters:   d("lockd_lock_waiters", "Acquires queued, waiting for a grant."),
		revision:  d("lockd_revision", "The lock table's revision."),
		nsLocks:   d("lockd_namespace_locks", "Locks in the table, by namespace.", "namespace"),
		nsGrants:  d("lockd_namespace_locks_held", "Grants held, by namespace.", "namespace"),
		nsWaiters: d("lockd_namespace_lock_waiters", "Waiters queued, by namespace (a multi-lock waiter counts once per lock).", "namespace"),
	}
}

func (c *tableCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.leases, c.locks, c.grants, c.waiters, c.revision, c.nsLocks, c.nsGrants, c.nsWaiters} {
		ch <- d
	}
}

func (c *tableCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.table.Stats()
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	gauge(c.leases, st.Leases)
	gauge(c.locks, st.Locks)
	gauge(c.grants, st.Grants)
	gauge(c.waiters, st.Waiters)
	ch <- prometheus.MustNewConstMetric(c.revision, prometheus.GaugeValue, float64(st.Revision))

	c.mu.Lock()
	if time.Since(c.walked) >= nsStatsEvery {
		c.walked = time.Now()
		c.byNS = map[string]locks.NamespaceStats{}
		for ns, s := range c.table.Namespaces() {
			label := c.m.namespace(ns)
			t := c.byNS[label]
			t.Locks += s.Locks
			t.Grants += s.Grants
			t.Waiters += s.Waiters
			c.byNS[label] = t
		}
	}
	byNS := c.byNS
	c.mu.Unlock()
	for ns, s := range byNS {
		gauge(c.nsLocks, s.Locks, ns)
		gauge(c.nsGrants, s.Grants, ns)
		gauge(c.nsWaiters, s.Waiters, ns)
	}
}
