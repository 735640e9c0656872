package node

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockd-io/lockd/store"
	"github.com/rs/zerolog"
)

// opSM is the test state machine: its state is the sequence of operation ids
// it applied, so the snapshot carries the whole history across restarts and
// the checker can compare every node's sequence.
type opSM struct {
	mu  sync.Mutex
	ops []uint64
}

func (s *opSM) Apply(index, term uint64, cmd []byte) any {
	if len(cmd) == 0 {
		return nil // a new leader's empty entry
	}
	if len(cmd) != 8 {
		panic(fmt.Sprintf("opSM: command of %d bytes at %d", len(cmd), index))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops = append(s.ops, binary.BigEndian.Uint64(cmd))
	return index
}

func (s *opSM) Snapshot() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]byte, 0, 8*len(s.ops))
	for _, op := range s.ops {
		out = binary.BigEndian.AppendUint64(out, op)
	}
	return out, nil
}

func (s *opSM) Restore(data []byte) error {
	if len(data)%8 != 0 {
		return errors.New("opSM: bad snapshot")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops = s.ops[:0]
	for i := 0; i < len(data); i += 8 {
		s.ops = append(s.ops, binary.BigEndian.Uint64(data[i:]))
	}
	return nil
}

func (s *opSM) history() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]uint64(nil), s.ops...)
}

// netFaults is a fault-injecting network for the transport: per-link
// partitions, a drop rate and a delay range, changed at run time.
type netFaults struct {
	mu       sync.Mutex
	rng      *rand.Rand
	cut      map[[2]uint64]bool
	dropRate float64
	maxDelay time.Duration
	dropped  atomic.Int64
	// diskDelay, in nanoseconds, slows every synced write (DiskFaults).
	diskDelay atomic.Int64
}

func (f *netFaults) WriteDelay() time.Duration { return time.Duration(f.diskDelay.Load()) }

func newNetFaults(seed uint64) *netFaults {
	return &netFaults{rng: rand.New(rand.NewPCG(seed, 1)), cut: map[[2]uint64]bool{}}
}

func (f *netFaults) Outbound(from, to uint64) (bool, time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cut[[2]uint64{from, to}] || (f.dropRate > 0 && f.rng.Float64() < f.dropRate) {
		f.dropped.Add(1)
		return true, 0
	}
	if f.maxDelay > 0 {
		return false, time.Duration(f.rng.Int64N(int64(f.maxDelay)))
	}
	return false, 0
}

// isolate cuts every link between the nodes in group and the others.
func (f *netFaults) isolate(group []uint64, all []uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := map[uint64]bool{}
	for _, id := range group {
		in[id] = true
	}
	for _, a := range all {
		for _, b := range all {
			if in[a] != in[b] {
				f.cut[[2]uint64{a, b}] = true
			}
		}
	}
}

func (f *netFaults) heal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cut = map[[2]uint64]bool{}
	f.dropRate = 0
	f.maxDelay = 0
}

func (f *netFaults) set(drop float64, delay time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dropRate, f.maxDelay = drop, delay
}

// testNode is one member of an in-process cluster: a real pebble store in a
// temp dir and a real HTTP/2 server on loopback that outlives restarts of
// the node behind it.
type testNode struct {
	name string
	dir  string
	url  string
	srv  *http.Server
	sm   *opSM

	mu   sync.Mutex
	node *Node
	st   *store.Store
}

func (tn *testNode) current() *Node {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	return tn.node
}

func (tn *testNode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := tn.current()
	if n == nil {
		http.Error(w, "node down", http.StatusServiceUnavailable)
		return
	}
	n.PeerHandler().ServeHTTP(w, r)
}

type testCluster struct {
	t      testing.TB
	nodes  []*testNode
	peers  []Peer
	ids    []uint64
	faults *netFaults
	tweak  func(*Config)
}

func newTestCluster(t testing.TB, size int, faults *netFaults, tweak func(*Config)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, faults: faults, tweak: tweak}
	base := t.TempDir()
	for i := range size {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		tn := &testNode{name: fmt.Sprintf("n%d", i+1), dir: filepath.Join(base, fmt.Sprintf("n%d", i+1)), url: "http://" + ln.Addr().String()}
		tn.srv = &http.Server{Handler: tn, Protocols: new(http.Protocols)}
		tn.srv.Protocols.SetHTTP1(true)
		tn.srv.Protocols.SetUnencryptedHTTP2(true)
		go tn.srv.Serve(ln)
		c.nodes = append(c.nodes, tn)
		c.peers = append(c.peers, Peer{Name: tn.name, URL: tn.url})
		c.ids = append(c.ids, MemberID(tn.name))
	}
	for _, tn := range c.nodes {
		c.start(tn)
	}
	t.Cleanup(func() {
		for _, tn := range c.nodes {
			c.crash(tn)
			tn.srv.Close()
		}
	})
	return c
}

func (c *testCluster) start(tn *testNode) {
	c.t.Helper()
	st, err := store.Open(tn.dir, store.Options{})
	if err != nil {
		c.t.Fatalf("opening store of %s: %v", tn.name, err)
	}
	tn.sm = &opSM{}
	cfg := Config{
		Name:              tn.name,
		InitialCluster:    c.peers,
		Store:             st,
		StateMachine:      tn.sm,
		HeartbeatInterval: 20 * time.Millisecond,
		ElectionTimeout:   200 * time.Millisecond,
		Logger:            testLogger(),
	}
	if c.faults != nil {
		cfg.Faults = c.faults
	}
	if c.tweak != nil {
		c.tweak(&cfg)
	}
	n, err := Start(cfg)
	if err != nil {
		c.t.Fatalf("starting %s: %v", tn.name, err)
	}
	tn.mu.Lock()
	tn.node, tn.st = n, st
	tn.mu.Unlock()
}

// crash stops a node between two raft turns, as a process kill would: what
// was synced stays, nothing else is written.
func (c *testCluster) crash(tn *testNode) {
	tn.mu.Lock()
	n, st := tn.node, tn.st
	tn.node, tn.st = nil, nil
	tn.mu.Unlock()
	if n == nil {
		return
	}
	n.Stop()
	st.Close()
}

func (c *testCluster) leader() *testNode {
	for _, tn := range c.nodes {
		if n := tn.current(); n != nil && n.Leader() == n.ID() {
			return tn
		}
	}
	return nil
}

// follower returns a node other than l.
func (c *testCluster) follower(l *testNode) *testNode {
	for _, tn := range c.nodes {
		if tn != l {
			return tn
		}
	}
	return nil
}

// waitLeader waits until a live node is leader and every live node agrees.
func (c *testCluster) waitLeader(timeout time.Duration) *testNode {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if l := c.leader(); l != nil {
			agree := true
			for _, tn := range c.nodes {
				if n := tn.current(); n != nil && n.Leader() != l.current().ID() {
					agree = false
				}
			}
			if agree {
				return l
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("no agreed leader within %v", timeout)
	return nil
}

func testLogger() zerolog.Logger {
	if os.Getenv("LOCKD_TEST_LOG") != "" {
		return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).With().Timestamp().Logger()
	}
	return zerolog.Nop()
}

func opCmd(op uint64) []byte { return binary.BigEndian.AppendUint64(nil, op) }

func propose(ctx context.Context, n *Node, op uint64) error {
	_, err := n.Propose(ctx, opCmd(op))
	return err
}
