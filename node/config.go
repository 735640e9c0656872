package node

import (
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/lockd-io/lockd/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Config configures a Node. Zero durations and counts take the defaults
// documented on each field.
type Config struct {
	// Name identifies this member in the cluster; its raft id is derived
	// from it (see MemberID), so it must be unique and must not change.
	Name string
	// InitialCluster lists every member of a new cluster, this one included.
	// It is used only when the store is empty; a restarted node reads its
	// membership from its own log and snapshot.
	InitialCluster []Peer

	// Join, with an empty store, makes the node a new member of the running
	// cluster ClusterID, whose members (this one included, added with
	// AddMember) are InitialCluster: it starts with an empty log and learns
	// everything from the leader, instead of bootstrapping a new cluster.
	Join      bool
	ClusterID uint64

	// Store is the node's durable log; the node does not close it.
	Store *store.Store
	// StateMachine receives committed commands.
	StateMachine StateMachine

	// HeartbeatInterval is the raft tick: the leader sends a heartbeat every
	// tick. Default 100ms.
	HeartbeatInterval time.Duration
	// ElectionTimeout is how long a follower waits without hearing from a
	// leader before it campaigns; raft randomizes it into [timeout, 2×timeout).
	// It must be at least 3 heartbeats. Default 1s.
	ElectionTimeout time.Duration
	// SnapshotEntries is how many applied entries trigger a snapshot and a
	// compaction of the log. Default 10000. Either trigger also waits until
	// the entries since the last snapshot amount to a quarter of its size,
	// so that a large state is not encoded over and over.
	SnapshotEntries uint64
	// SnapshotBytes triggers a snapshot too: once the entries applied since
	// the last one reach this many bytes, so a log of large entries stays
	// as small on disk as one of small entries. Default 64 MiB.
	SnapshotBytes uint64
	// CompactionMargin is how many entries below a snapshot are kept, so a
	// follower that lags a little catches up from the log rather than by a
	// snapshot: at most this many, and at most SnapshotBytes/2 bytes of
	// them (a bound kept for margins up to 65536 entries; larger ones, for
	// tests that keep the whole log, are bounded by count). Default 5000.
	CompactionMargin uint64

	// Faults, when set, sees every outgoing peer batch and may drop or delay
	// it. It exists for fault-injection tests; leave it nil in production.
	Faults Faults
	// PeerTLS, when set, is the client side of the TLS connections to the
	// other members (https:// peer URLs): this member's certificate, which
	// they check, and the CA that must have signed theirs. The server side
	// is the caller's, which serves PeerHandler.
	PeerTLS *tls.Config

	Logger zerolog.Logger
	// Metrics, when set, receives the node's Prometheus metrics (raft term,
	// indexes, leader changes, proposal and fsync latency, snapshots).
	Metrics prometheus.Registerer

	// bugs breaks the node on purpose, so tests can show that their checkers
	// catch a broken build. Only this package's tests set it.
	bugs bugs
}

// bugs are deliberate defects for checker tests.
type bugs struct {
	// ackOnPropose answers a proposer once raft accepts the proposal, before
	// it is committed: acknowledged writes can then be lost.
	ackOnPropose bool
	// replayFromLogStart restarts raft with Applied = 0 even though the state
	// machine was restored from a snapshot, so entries are applied twice.
	replayFromLogStart bool
}

// Peer names one member and the URL its peers reach it at.
type Peer struct {
	Name string
	URL  string
}

// MemberID is the raft id of the member with the given name: the FNV-64a hash
// of the name, so every node derives the same ids from the same names.
func MemberID(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	if id := h.Sum64(); id != 0 {
		return id
	}
	return 1 // raft reserves 0 for "none"
}

// ParseInitialCluster parses "n1=http://127.0.0.1:7071,n2=…" into peers.
func ParseInitialCluster(s string) ([]Peer, error) {
	var peers []Peer
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, raw, ok := strings.Cut(part, "=")
		if !ok || name == "" || raw == "" {
			return nil, fmt.Errorf("initial cluster entry %q: want NAME=URL", part)
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("initial cluster entry %q: URL must be http://host:port", part)
		}
		if seen[name] {
			return nil, fmt.Errorf("initial cluster names %q twice", name)
		}
		seen[name] = true
		peers = append(peers, Peer{Name: name, URL: strings.TrimRight(raw, "/")})
	}
	if len(peers) == 0 {
		return nil, errors.New("initial cluster is empty")
	}
	sort.Slice(peers, func(i, j int) bool { return peers[i].Name < peers[j].Name })
	return peers, nil
}

// clusterID identifies a cluster by the hash of its initial membership, so
// that nodes of two different clusters never accept each other's messages.
func clusterID(peers []Peer) uint64 {
	h := fnv.New64a()
	for _, p := range peers {
		fmt.Fprintf(h, "%s=%s,", p.Name, p.URL)
	}
	return h.Sum64()
}

func (c *Config) setDefaults() {
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 100 * time.Millisecond
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = time.Second
	}
	if c.SnapshotEntries == 0 {
		c.SnapshotEntries = 10000
	}
	if c.SnapshotBytes == 0 {
		c.SnapshotBytes = 64 << 20
	}
	if c.CompactionMargin == 0 {
		c.CompactionMargin = 5000
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("node: Name is required"))
	}
	if c.Store == nil {
		errs = append(errs, errors.New("node: Store is required"))
	}
	if c.StateMachine == nil {
		errs = append(errs, errors.New("node: StateMachine is required"))
	}
	if c.HeartbeatInterval <= 0 {
		errs = append(errs, errors.New("node: HeartbeatInterval must be positive"))
	}
	if c.ElectionTimeout < 3*c.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("node: ElectionTimeout %v must be at least 3 heartbeats (%v)", c.ElectionTimeout, 3*c.HeartbeatInterval))
	}
	found := false
	for _, p := range c.InitialCluster {
		if p.Name == c.Name {
			found = true
		}
	}
	if len(c.InitialCluster) > 0 && !found {
		errs = append(errs, fmt.Errorf("node: initial cluster does not name this node %q", c.Name))
	}
	return errors.Join(errs...)
}

// electionTicks is the election timeout in heartbeat ticks.
func (c *Config) electionTicks() int {
	return int(c.ElectionTimeout / c.HeartbeatInterval)
}
