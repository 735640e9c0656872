package node

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the node's Prometheus metrics. A node without a registerer
// keeps them unregistered: updating them costs the same, and nobody reads
// them.
type metrics struct {
	leaderChanges prometheus.Counter
	proposal      prometheus.Histogram // from a proposal to its apply, on the proposing node
	fsync         prometheus.Histogram // a synced write of a raft Ready
	snapshots     prometheus.Counter
	snapshotBytes prometheus.Gauge
	snapshotTime  prometheus.Histogram
}

// latencyBuckets run from 100µs to ~6.5s, doubling.
var latencyBuckets = prometheus.ExponentialBuckets(0.0001, 2, 17)

func newMetrics(n *Node, reg prometheus.Registerer) *metrics {
	m := &metrics{
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lockd_raft_leader_changes_total", Help: "Times this node saw the raft leader change (to another node or to none).",
		}),
		proposal: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lockd_raft_proposal_duration_seconds", Help: "From a proposal on this node to its apply here.", Buckets: latencyBuckets,
		}),
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lockd_store_fsync_duration_seconds", Help: "Synced writes of raft's entries and hard state (one per group commit).", Buckets: latencyBuckets,
		}),
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lockd_raft_snapshots_total", Help: "Snapshots this node took of its state machine.",
		}),
		snapshotBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lockd_raft_snapshot_bytes", Help: "Size of the newest snapshot this node took or received.",
		}),
		snapshotTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lockd_raft_snapshot_duration_seconds", Help: "Time to take and save a snapshot.", Buckets: latencyBuckets,
		}),
	}
	if reg == nil {
		return m
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	reg.MustRegister(
		m.leaderChanges, m.proposal, m.fsync, m.snapshots, m.snapshotBytes, m.snapshotTime,
		gauge("lockd_raft_term", "The raft term this node is in.", func() float64 { return float64(n.term.Load()) }),
		gauge("lockd_raft_is_leader", "1 if this node leads the cluster.", func() float64 {
			if l := n.leader.Load(); l != 0 && l == n.id {
				return 1
			}
			return 0
		}),
		gauge("lockd_raft_has_leader", "1 if this node knows a leader.", func() float64 {
			if n.leader.Load() != 0 {
				return 1
			}
			return 0
		}),
		gauge("lockd_raft_commit_index", "The highest log index this node knows to be committed.", func() float64 { return float64(n.commit.Load()) }),
		gauge("lockd_raft_applied_index", "The highest log index applied to this node's state machine.", func() float64 { return float64(n.applied.Load()) }),
		gauge("lockd_store_disk_bytes", "Disk space of the node's data dir (log and snapshots).", func() float64 { return float64(n.store.DiskUsage()) }),
	)
	return m
}

func since(t time.Time) float64 { return time.Since(t).Seconds() }
