package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/lockd-io/lockd/node"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"github.com/lockd-io/lockd/proto/lockd/v1/lockdv1connect"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The API tests run whole lockd nodes in this process (store, raft node,
// server, HTTP/2 on loopback), so the race detector sees the server code,
// and call them with real Connect, gRPC and gRPC-Web clients.

const testElection = 300 * time.Millisecond

// startInstances starts a cluster of size in-process nodes.
func startInstances(t testing.TB, size int) []*instance {
	return startInstancesWith(t, size, nil)
}

// startInstancesWith starts a cluster of in-process nodes, giving node i
// the peer faults faults(i) when faults is not nil.
func startInstancesWith(t testing.TB, size int, faults func(i int) node.Faults) []*instance {
	t.Helper()
	return startInstancesConfig(t, size, "http", func(i int, c *serveConfig) {
		if faults != nil {
			c.faults = faults(i)
		}
	})
}

// startInstancesConfig starts a cluster of in-process nodes whose URLs
// have scheme, letting config adjust node i's configuration.
func startInstancesConfig(t testing.TB, size int, scheme string, config func(i int, c *serveConfig)) []*instance {
	t.Helper()
	addrs := freeAddrs(t, size)
	initial, peers := initialClusterScheme(t, scheme, "n", addrs)
	base := t.TempDir()
	var out []*instance
	for i, a := range addrs {
		c := serveConfig{
			name:            fmt.Sprintf("n%d", i+1),
			dataDir:         filepath.Join(base, fmt.Sprintf("n%d", i+1)),
			listen:          a,
			initialCluster:  initial,
			heartbeat:       30 * time.Millisecond,
			electionTimeout: testElection,
			snapshotEntries: 10000,
			advertise:       scheme + "://" + a,
		}
		config(i, &c)
		in, err := start(c, peers, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(in.close)
		out = append(out, in)
	}
	waitLeader(t, out)
	return out
}

// followerOf returns a node of ins other than leader.
func followerOf(ins []*instance, leader *instance) *instance {
	for _, in := range ins {
		if in != leader {
			return in
		}
	}
	return nil
}

// initialCluster names the nodes at addrs prefix1, prefix2, … and returns
// the --initial-cluster value and its parsed peers.
func initialCluster(t testing.TB, prefix string, addrs []string) (string, []node.Peer) {
	t.Helper()
	return initialClusterScheme(t, "http", prefix, addrs)
}

func initialClusterScheme(t testing.TB, scheme, prefix string, addrs []string) (string, []node.Peer) {
	t.Helper()
	var initial []string
	for i, a := range addrs {
		initial = append(initial, fmt.Sprintf("%s%d=%s://%s", prefix, i+1, scheme, a))
	}
	peers, err := node.ParseInitialCluster(strings.Join(initial, ","))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(initial, ","), peers
}

func waitLeader(t testing.TB, ins []*instance) *instance {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, in := range ins {
			if leader, _, quorum := in.node.Leadership(); leader && quorum {
				return in
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no leader")
	return nil
}

func (in *instance) url() string {
	if in.sec.tlsOn() {
		return "https://" + in.ln.Addr().String()
	}
	return "http://" + in.ln.Addr().String()
}

// clients are the API's clients over one protocol.
type clients struct {
	lease    lockdv1connect.LeaseServiceClient
	lock     lockdv1connect.LockServiceClient
	election lockdv1connect.ElectionServiceClient
	cluster  lockdv1connect.ClusterServiceClient
}

var h2c = func() *http.Client {
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr}
}()

var protocols = map[string][]connect.ClientOption{
	"connect":  nil,
	"grpc":     {connect.WithGRPC()},
	"grpc-web": {connect.WithGRPCWeb()},
}

func newClients(url string, opts ...connect.ClientOption) clients {
	return newClientsHTTP(h2c, url, opts...)
}

func newClientsHTTP(hc *http.Client, url string, opts ...connect.ClientOption) clients {
	return clients{
		lease:    lockdv1connect.NewLeaseServiceClient(hc, url, opts...),
		lock:     lockdv1connect.NewLockServiceClient(hc, url, opts...),
		election: lockdv1connect.NewElectionServiceClient(hc, url, opts...),
		cluster:  lockdv1connect.NewClusterServiceClient(hc, url, opts...),
	}
}

func grant(t testing.TB, c clients, ttl time.Duration, owner string) uint64 {
	t.Helper()
	resp, err := c.lease.Grant(context.Background(), connect.NewRequest(&lockdv1.GrantRequest{Ttl: durationpb.New(ttl), Owner: owner}))
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	return resp.Msg.GetLeaseId()
}

// keepAlive keeps a lease alive until the test ends or stop is called.
func keepAlive(t testing.TB, c clients, id uint64, every time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
				c.lease.KeepAlive(ctx, connect.NewRequest(&lockdv1.KeepAliveRequest{LeaseId: id}))
			}
		}
	}()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

func acquire(ctx context.Context, c clients, req *lockdv1.AcquireRequest) (*lockdv1.AcquireResponse, error) {
	resp, err := c.lock.Acquire(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

func describe(t testing.TB, c clients, name string) *lockdv1.DescribeResponse {
	t.Helper()
	resp, err := c.lock.Describe(context.Background(), connect.NewRequest(&lockdv1.DescribeRequest{Name: name}))
	if err != nil {
		t.Fatalf("describe %s: %v", name, err)
	}
	return resp.Msg
}

func codeOf(err error) connect.Code {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Code()
	}
	return connect.CodeUnknown
}

// Every bad input gets the Connect code DESIGN.md names, a message that
// says what was wrong, and changes nothing.
func TestAPIBadInput(t *testing.T) {
	ins := startInstances(t, 1)
	setup := newClients(ins[0].url())
	holder := grant(t, setup, time.Second, "holder")
	other := grant(t, setup, time.Second, "other")
	keepAlive(t, setup, holder, 100*time.Millisecond)
	keepAlive(t, setup, other, 100*time.Millisecond)
	held, err := acquire(context.Background(), setup, &lockdv1.AcquireRequest{Name: "app/held", LeaseId: holder})
	if err != nil {
		t.Fatal(err)
	}
	// A waiter behind the holder, so that Describe shows a queue too.
	queued := grant(t, setup, time.Second, "queued")
	keepAlive(t, setup, queued, 100*time.Millisecond)
	waitCtx, stopWaiting := context.WithCancel(context.Background())
	defer stopWaiting()
	go acquire(waitCtx, setup, &lockdv1.AcquireRequest{Name: "app/held", LeaseId: queued})
	eventually(t, 5*time.Second, "the waiter queued", func() error {
		if n := len(describe(t, setup, "app/held").GetWaiters()); n != 1 {
			return fmt.Errorf("%d waiters", n)
		}
		return nil
	})
	// Real earlier tokens: "app/stale" granted to holder, released, and
	// granted to holder again (staleOwn is stale, the lease holds it with a
	// newer token); "app/superseded" granted to holder, released, and
	// granted to other (staleOther belongs to a grant that is over).
	reacquire := func(name string, first, second uint64) (stale, current uint64) {
		t.Helper()
		r1, err := acquire(context.Background(), setup, &lockdv1.AcquireRequest{Name: name, LeaseId: first})
		if err != nil || !r1.GetGranted() {
			t.Fatalf("acquire %s: %v %v", name, r1, err)
		}
		if _, err := setup.lock.Release(context.Background(), connect.NewRequest(&lockdv1.ReleaseRequest{Name: name, LeaseId: first, Token: r1.GetToken()})); err != nil {
			t.Fatalf("release %s: %v", name, err)
		}
		r2, err := acquire(context.Background(), setup, &lockdv1.AcquireRequest{Name: name, LeaseId: second})
		if err != nil || !r2.GetGranted() || r2.GetToken() <= r1.GetToken() {
			t.Fatalf("acquire %s again: %v %v (first token %d)", name, r2, err, r1.GetToken())
		}
		return r1.GetToken(), r2.GetToken()
	}
	staleOwn, currentOwn := reacquire("app/stale", holder, holder)
	staleOther, currentOther := reacquire("app/superseded", holder, other)
	for name, tok := range map[string]uint64{"app/stale": currentOwn, "app/superseded": currentOther, "app/held": held.GetToken()} {
		if r, err := setup.lock.CheckFence(context.Background(), connect.NewRequest(&lockdv1.CheckFenceRequest{Name: name, Token: tok})); err != nil || !r.Msg.GetValid() {
			t.Fatalf("the current token %d of %s is not valid: %v %v", tok, name, r, err)
		}
	}
	// staleFence checks that CheckFence answers, without an error, that a
	// token is not (or no longer) a holder's.
	staleFence := func(c clients, name string, token uint64) error {
		r, err := c.lock.CheckFence(context.Background(), connect.NewRequest(&lockdv1.CheckFenceRequest{Name: name, Token: token}))
		if err != nil {
			return err
		}
		if r.Msg.GetValid() {
			return fmt.Errorf("CheckFence(%s, %d) says valid", name, token)
		}
		return nil
	}
	// Fill one lease to its quota of grants, 64 locks per acquire.
	full := grant(t, setup, time.Second, "full")
	keepAlive(t, setup, full, 100*time.Millisecond)
	for i := 0; i < 10000; i += 64 {
		req := &lockdv1.AcquireRequest{Name: fmt.Sprintf("quota/%05d", i), LeaseId: full}
		for j := i + 1; j < min(i+64, 10000); j++ {
			req.Also = append(req.Also, fmt.Sprintf("quota/%05d", j))
		}
		if _, err := acquire(context.Background(), setup, req); err != nil {
			t.Fatalf("filling the quota: %v", err)
		}
	}
	long := strings.Repeat("x", 513)
	zero := durationpb.New(0)

	// The locks whose Describe must not change; every case touches one of
	// them, if any.
	affected := []string{"app/held", "app/stale", "app/superseded", "app/x", "app/v", "a/b", "quota/00000", "quota/one-more", "election/e"}
	cases := []struct {
		name string
		code connect.Code // 0: the call succeeds, and checks its answer itself
		call func(c clients) error
	}{
		{"empty name", connect.CodeInvalidArgument, func(c clients) error {
			_, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "", LeaseId: holder})
			return err
		}},
		{"over-long name", connect.CodeInvalidArgument, func(c clients) error {
			_, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: long, LeaseId: holder})
			return err
		}},
		{"empty segment", connect.CodeInvalidArgument, func(c clients) error {
			_, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "a//b", LeaseId: holder})
			return err
		}},
		{"reserved namespace", connect.CodeInvalidArgument, func(c clients) error {
			_, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "election/x", LeaseId: holder})
			return err
		}},
		{"TTL 0", connect.CodeInvalidArgument, func(c clients) error {
			_, err := c.lease.Grant(context.Background(), connect.NewRequest(&lockdv1.GrantRequest{Ttl: zero}))
			return err
		}},
		{"TTL below election timeout", connect.CodeInvalidArgument, func(c clients) error {
			_, err := c.lease.Grant(context.Background(), connect.NewRequest(&lockdv1.GrantRequest{Ttl: durationpb.New(testElection / 2)}))
			return err
		}},
		{"TTL huge", connect.CodeInvalidArgument, func(c clients) error {
			_, err := c.lease.Grant(context.Background(), connect.NewRequest(&lockdv1.GrantRequest{Ttl: durationpb.New(25 * time.Hour)}))
			return err
		}},
		{"TTL missing", connect.CodeInvalidArgument, func(c clients) error {
			_, err := c.lease.Grant(context.Background(), connect.NewRequest(&lockdv1.GrantRequest{}))
			return err
		}},
		{"unknown lease", connect.CodeNotFound, func(c clients) error {
			_, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "app/x", LeaseId: 987654})
			return err
		}},
		{"keep-alive of unknown lease", connect.CodeNotFound, func(c clients) error {
			_, err := c.lease.KeepAlive(context.Background(), connect.NewRequest(&lockdv1.KeepAliveRequest{LeaseId: 987654}))
			return err
		}},
		{"keep-alive of no leases", connect.CodeInvalidArgument, func(c clients) error {
			_, err := c.lease.KeepAliveMany(context.Background(), connect.NewRequest(&lockdv1.KeepAliveManyRequest{}))
			return err
		}},
		{"keep-alive of lease 0", connect.CodeInvalidArgument, func(c clients) error {
			_, err := c.lease.KeepAliveMany(context.Background(), connect.NewRequest(&lockdv1.KeepAliveManyRequest{LeaseIds: []uint64{holder, 0}}))
			return err
		}},
		{"keep-alive of too many leases", connect.CodeInvalidArgument, func(c clients) error {
			_, err := c.lease.KeepAliveMany(context.Background(), connect.NewRequest(&lockdv1.KeepAliveManyRequest{LeaseIds: make([]uint64, 50001)}))
			return err
		}},
		{"member without a name", connect.CodeInvalidArgument, func(c clients) error {
			_, err := c.cluster.AddMember(context.Background(), connect.NewRequest(&lockdv1.AddMemberRequest{PeerUrl: "http://127.0.0.1:1"}))
			return err
		}},
		{"member with a bad URL", connect.CodeInvalidArgument, func(c clients) error {
			_, err := c.cluster.AddMember(context.Background(), connect.NewRequest(&lockdv1.AddMemberRequest{Name: "n9", PeerUrl: "127.0.0.1:1"}))
			return err
		}},
		{"member added twice", connect.CodeFailedPrecondition, func(c clients) error {
			_, err := c.cluster.AddMember(context.Background(), connect.NewRequest(&lockdv1.AddMemberRequest{Name: "n1", PeerUrl: "http://127.0.0.1:1", Learner: true}))
			return err
		}},
		{"promote of a non-member", connect.CodeFailedPrecondition, func(c clients) error {
			_, err := c.cluster.PromoteMember(context.Background(), connect.NewRequest(&lockdv1.PromoteMemberRequest{Name: "nobody"}))
			return err
		}},
		{"removal of the last voter", connect.CodeFailedPrecondition, func(c clients) error {
			_, err := c.cluster.RemoveMember(context.Background(), connect.NewRequest(&lockdv1.RemoveMemberRequest{Name: "n1"}))
			return err
		}},
		{"release by non-holder", connect.CodeFailedPrecondition, func(c clients) error {
			_, err := c.lock.Release(context.Background(), connect.NewRequest(&lockdv1.ReleaseRequest{Name: "app/held", LeaseId: other}))
			return err
		}},
		{"release with a stale token of the holder", connect.CodeFailedPrecondition, func(c clients) error {
			_, err := c.lock.Release(context.Background(), connect.NewRequest(&lockdv1.ReleaseRequest{Name: "app/stale", LeaseId: holder, Token: staleOwn}))
			return err
		}},
		{"release with the token of a grant that is over", connect.CodeFailedPrecondition, func(c clients) error {
			_, err := c.lock.Release(context.Background(), connect.NewRequest(&lockdv1.ReleaseRequest{Name: "app/superseded", LeaseId: holder, Token: staleOther}))
			return err
		}},
		{"force release of a stale token", connect.CodeFailedPrecondition, func(c clients) error {
			_, err := c.lock.ForceRelease(context.Background(), connect.NewRequest(&lockdv1.ForceReleaseRequest{Name: "app/superseded", Token: staleOther, Reason: "test"}))
			return err
		}},
		{"check fence of a stale token of the holder", 0, func(c clients) error { return staleFence(c, "app/stale", staleOwn) }},
		{"check fence of the token of a grant that is over", 0, func(c clients) error { return staleFence(c, "app/superseded", staleOther) }},
		{"check fence of another lock's token", 0, func(c clients) error { return staleFence(c, "app/held", currentOwn) }},
		{"check fence of token 0", connect.CodeInvalidArgument, func(c clients) error { return staleFence(c, "app/held", 0) }},
		{"capacity conflict", connect.CodeFailedPrecondition, func(c clients) error {
			_, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "app/held", LeaseId: other, Capacity: 3, Wait: zero})
			return err
		}},
		{"quota exceeded", connect.CodeResourceExhausted, func(c clients) error {
			_, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "quota/one-more", LeaseId: full})
			return err
		}},
		{"value too large", connect.CodeInvalidArgument, func(c clients) error {
			_, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "app/v", LeaseId: holder, Value: make([]byte, 5000)})
			return err
		}},
		{"force release without reason", connect.CodeInvalidArgument, func(c clients) error {
			_, err := c.lock.ForceRelease(context.Background(), connect.NewRequest(&lockdv1.ForceReleaseRequest{Name: "app/held"}))
			return err
		}},
		{"proclaim in a term not held", connect.CodeFailedPrecondition, func(c clients) error {
			_, err := c.election.Proclaim(context.Background(), connect.NewRequest(&lockdv1.ProclaimRequest{Name: "e", LeaseId: holder, Term: 1, Value: []byte("v")}))
			return err
		}},
		{"negative wait", connect.CodeInvalidArgument, func(c clients) error {
			_, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "app/x", LeaseId: holder, Wait: durationpb.New(-time.Second)})
			return err
		}},
		{"negative campaign wait", connect.CodeInvalidArgument, func(c clients) error {
			_, err := c.election.Campaign(context.Background(), connect.NewRequest(&lockdv1.CampaignRequest{Name: "e", LeaseId: holder, Wait: durationpb.New(-time.Second)}))
			return err
		}},
		{"list limit too large", connect.CodeInvalidArgument, func(c clients) error {
			_, err := c.lock.List(context.Background(), connect.NewRequest(&lockdv1.ListRequest{Limit: 5000}))
			return err
		}},
	}
	for protocol, opts := range protocols {
		c := newClients(ins[0].url(), opts...)
		for _, tc := range cases {
			t.Run(protocol+"/"+tc.name, func(t *testing.T) {
				var before []*lockdv1.DescribeResponse
				for _, name := range affected {
					before = append(before, describe(t, setup, name))
				}
				err := tc.call(c)
				switch got := codeOf(err); {
				case tc.code == 0 && err != nil:
					t.Fatalf("got %v, want an answer", err)
				case tc.code != 0 && got != tc.code:
					t.Fatalf("got %v (%v), want %v", got, err, tc.code)
				}
				var ce *connect.Error
				if errors.As(err, &ce) && len(ce.Message()) < 10 {
					t.Errorf("message %q does not say what was wrong", ce.Message())
				}
				for i, name := range affected {
					after := describe(t, setup, name)
					if after.GetRevision() != before[i].GetRevision() {
						t.Fatalf("a rejected request changed the table: revision %d -> %d", before[i].GetRevision(), after.GetRevision())
					}
					if !proto.Equal(after, before[i]) {
						t.Fatalf("a rejected request changed %s:\nbefore %v\nafter  %v", name, before[i], after)
					}
				}
			})
		}
	}
}

// A mutex hands over in FIFO order with increasing tokens, over every
// protocol.
func TestAPIMutexHandoff(t *testing.T) {
	ins := startInstances(t, 1)
	for proto, opts := range protocols {
		t.Run(proto, func(t *testing.T) {
			c := newClients(ins[0].url(), opts...)
			name := "handoff/" + proto
			var leases []uint64
			for i := range 4 {
				id := grant(t, c, 5*time.Second, fmt.Sprintf("client-%d", i))
				keepAlive(t, c, id, 200*time.Millisecond)
				leases = append(leases, id)
			}
			first, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: name, LeaseId: leases[0]})
			if err != nil || !first.GetGranted() {
				t.Fatalf("first acquire: %v %v", first, err)
			}
			type grantResult struct {
				lease uint64
				resp  *lockdv1.AcquireResponse
				err   error
			}
			results := make(chan grantResult, 3)
			for i, id := range leases[1:] {
				go func() {
					r, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: name, LeaseId: id})
					results <- grantResult{id, r, err}
				}()
				// Queue them in a known order.
				eventually(t, 5*time.Second, "queued", func() error {
					if n := len(describe(t, c, name).GetWaiters()); n != i+1 {
						return fmt.Errorf("%d waiters", n)
					}
					return nil
				})
			}
			d := describe(t, c, name)
			for i, w := range d.GetWaiters() {
				if w.GetLeaseId() != leases[i+1] {
					t.Fatalf("waiter %d is lease %d, want %d", i, w.GetLeaseId(), leases[i+1])
				}
			}
			holder, token := leases[0], first.GetToken()
			for i := range 3 {
				if _, err := c.lock.Release(context.Background(), connect.NewRequest(&lockdv1.ReleaseRequest{Name: name, LeaseId: holder, Token: token})); err != nil {
					t.Fatal(err)
				}
				r := <-results
				if r.err != nil || !r.resp.GetGranted() {
					t.Fatalf("handoff %d: %v %v", i, r.resp, r.err)
				}
				if r.lease != leases[i+1] {
					t.Fatalf("handoff %d went to lease %d, want %d (FIFO)", i, r.lease, leases[i+1])
				}
				if r.resp.GetToken() <= token {
					t.Fatalf("token %d after %d: tokens must increase", r.resp.GetToken(), token)
				}
				fence, err := c.lock.CheckFence(context.Background(), connect.NewRequest(&lockdv1.CheckFenceRequest{Name: name, Token: token}))
				if err != nil || fence.Msg.GetValid() {
					t.Fatalf("the old token %d is still valid: %v", token, err)
				}
				fence, err = c.lock.CheckFence(context.Background(), connect.NewRequest(&lockdv1.CheckFenceRequest{Name: name, Token: r.resp.GetToken()}))
				if err != nil || !fence.Msg.GetValid() {
					t.Fatalf("the new token %d is not valid: %v", r.resp.GetToken(), err)
				}
				holder, token = r.lease, r.resp.GetToken()
			}
		})
	}
}

func TestAPITryWaitAndWithdraw(t *testing.T) {
	ins := startInstances(t, 1)
	c := newClients(ins[0].url())
	a := grant(t, c, 5*time.Second, "a")
	b := grant(t, c, 5*time.Second, "b")
	keepAlive(t, c, a, 200*time.Millisecond)
	keepAlive(t, c, b, 200*time.Millisecond)
	if r, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "tw", LeaseId: a}); err != nil || !r.GetGranted() {
		t.Fatal(r, err)
	}
	// A try never queues.
	r, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "tw", LeaseId: b, Wait: durationpb.New(0)})
	if err != nil || r.GetGranted() {
		t.Fatalf("try on a held lock: %v %v", r, err)
	}
	if n := len(describe(t, c, "tw").GetWaiters()); n != 0 {
		t.Fatalf("a try left %d waiters", n)
	}
	// An explicit wait that runs out answers granted=false and withdraws.
	r, err = acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "tw", LeaseId: b, Wait: durationpb.New(200 * time.Millisecond)})
	if err != nil || r.GetGranted() {
		t.Fatalf("expired wait: %v %v", r, err)
	}
	if n := len(describe(t, c, "tw").GetWaiters()); n != 0 {
		t.Fatalf("an expired wait left %d waiters", n)
	}
	// The call's own deadline answers DeadlineExceeded and withdraws too.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = acquire(ctx, c, &lockdv1.AcquireRequest{Name: "tw", LeaseId: b})
	if codeOf(err) != connect.CodeDeadlineExceeded {
		t.Fatalf("deadline: %v, want DeadlineExceeded", err)
	}
	eventually(t, 5*time.Second, "the abandoned waiter withdrawn", func() error {
		if n := len(describe(t, c, "tw").GetWaiters()); n != 0 {
			return fmt.Errorf("%d waiters", n)
		}
		return nil
	})
	// Nothing is left held by b: a's release leaves the lock free.
	if _, err := c.lock.Release(context.Background(), connect.NewRequest(&lockdv1.ReleaseRequest{Name: "tw", LeaseId: a})); err != nil {
		t.Fatal(err)
	}
	if d := describe(t, c, "tw"); len(d.GetHolders()) != 0 {
		t.Fatalf("holders after release: %v", d.GetHolders())
	}
}

func TestAPIReentrancyAndRetry(t *testing.T) {
	ins := startInstances(t, 1)
	c := newClients(ins[0].url())
	a := grant(t, c, 5*time.Second, "a")
	b := grant(t, c, 5*time.Second, "b")
	keepAlive(t, c, a, 200*time.Millisecond)
	keepAlive(t, c, b, 200*time.Millisecond)
	r1, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "re", LeaseId: a, RequestId: 1})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "re", LeaseId: a, RequestId: 2})
	if err != nil || r2.GetToken() != r1.GetToken() {
		t.Fatalf("re-acquire by the holder: token %d, want %d (%v)", r2.GetToken(), r1.GetToken(), err)
	}
	// A retried queued acquire (same request id) does not queue twice.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	acquire(ctx, c, &lockdv1.AcquireRequest{Name: "re2", LeaseId: b, RequestId: 7, Wait: durationpb.New(0)})
	cancel()
	go acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "re", LeaseId: b, RequestId: 9})
	eventually(t, 5*time.Second, "b queued", func() error {
		if n := len(describe(t, c, "re").GetWaiters()); n != 1 {
			return fmt.Errorf("%d waiters", n)
		}
		return nil
	})
	done := make(chan *lockdv1.AcquireResponse, 1)
	go func() {
		r, _ := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "re", LeaseId: b, RequestId: 9})
		done <- r
	}()
	time.Sleep(100 * time.Millisecond)
	if n := len(describe(t, c, "re").GetWaiters()); n != 1 {
		t.Fatalf("a retried acquire queued again: %d waiters", n)
	}
	if _, err := c.lock.Release(context.Background(), connect.NewRequest(&lockdv1.ReleaseRequest{Name: "re", LeaseId: a})); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if !r.GetGranted() {
			t.Fatalf("retried acquire: %v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the retried acquire was not granted")
	}
}

// A client whose connection to a follower broke retries its acquire on the
// leader, the same request numbered as a later try, and is granted. The
// follower, cut off meanwhile, withdraws the first try when it can reach the
// leader again: that must not undo the grant the client was told of. (The
// nemesis found it: a node paused with a caller's stream open woke up and
// released the lock the caller had meanwhile been granted through another.)
func TestAPIAbandonedTryDoesNotUndoARetry(t *testing.T) {
	links := []*cutLinks{{}, {}, {}}
	ins := startInstancesWith(t, 3, func(i int) node.Faults { return links[i] })
	leader := waitLeader(t, ins)
	f := 0
	for ins[f] == leader {
		f++
	}
	cl, cf := newClients(leader.url()), newClients(ins[f].url())
	a := grant(t, cl, 10*time.Second, "a")
	b := grant(t, cl, 10*time.Second, "b")
	defer keepAlive(t, cl, a, 200*time.Millisecond)()
	defer keepAlive(t, cl, b, 200*time.Millisecond)()
	if _, err := acquire(context.Background(), cl, &lockdv1.AcquireRequest{Name: "x", LeaseId: a}); err != nil {
		t.Fatal(err)
	}
	first, abandon := context.WithCancel(context.Background())
	defer abandon()
	firstDone := make(chan error, 1)
	go func() {
		_, err := acquire(first, cf, &lockdv1.AcquireRequest{Name: "x", LeaseId: b, RequestId: 11, Attempt: 1})
		firstDone <- err
	}()
	eventually(t, 5*time.Second, "b queued, as the follower knows", func() error {
		if n := len(describe(t, cf, "x").GetWaiters()); n != 1 {
			return fmt.Errorf("%d waiters", n)
		}
		return nil
	})
	// The follower is cut off, and the client gives up on it and retries
	// on the leader.
	links[f].cut.Store(true)
	abandon()
	<-firstDone
	type answer struct {
		r   *lockdv1.AcquireResponse
		err error
	}
	retried := make(chan answer, 1)
	go func() {
		r, err := acquire(context.Background(), cl, &lockdv1.AcquireRequest{Name: "x", LeaseId: b, RequestId: 11, Attempt: 2})
		retried <- answer{r, err}
	}()
	if _, err := cl.lock.Release(context.Background(), connect.NewRequest(&lockdv1.ReleaseRequest{Name: "x", LeaseId: a})); err != nil {
		t.Fatal(err)
	}
	var got answer
	select {
	case got = <-retried:
	case <-time.After(10 * time.Second):
		t.Fatal("the retry was not answered")
	}
	if got.err != nil || !got.r.GetGranted() {
		t.Fatalf("the retry: %v %v, want granted", got.r, got.err)
	}
	// The follower's withdrawal of the first try now reaches the leader.
	links[f].cut.Store(false)
	eventually(t, 30*time.Second, "the first try withdrawn", func() error {
		m := scrape(t, ins[f].url())
		if n := m[`lockd_acquire_cancels_total{outcome="failed"}`]; n > 0 {
			t.Fatalf("the follower gave up withdrawing the first try")
		}
		if m[`lockd_acquire_cancels_total{outcome="done"}`]+m[`lockd_acquire_cancels_total{outcome="superseded"}`] == 0 {
			return errors.New("no withdrawal applied yet")
		}
		return nil
	})
	fence, err := cl.lock.CheckFence(context.Background(), connect.NewRequest(&lockdv1.CheckFenceRequest{Name: "x", Token: got.r.GetToken()}))
	if err != nil {
		t.Fatal(err)
	}
	if !fence.Msg.GetValid() {
		t.Fatalf("the withdrawal of an abandoned try released the grant its retry was told of (holders now %v)", describe(t, cl, "x").GetHolders())
	}
}

func TestAPILeaseExpiryAndEvents(t *testing.T) {
	ins := startInstances(t, 1)
	c := newClients(ins[0].url())
	dying := grant(t, c, 500*time.Millisecond, "dying")
	waiter := grant(t, c, 5*time.Second, "waiter")
	keepAlive(t, c, waiter, 200*time.Millisecond)
	if _, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "exp", LeaseId: dying}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := c.lease.Events(ctx, connect.NewRequest(&lockdv1.LeaseEventsRequest{LeaseId: dying}))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "exp", LeaseId: waiter})
	if err != nil || !r.GetGranted() {
		t.Fatalf("waiter: %v %v", r, err)
	}
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Fatalf("the lease expired after %v, before its TTL", took)
	}
	var types []lockdv1.LeaseEvent_Type
	for events.Receive() {
		types = append(types, events.Msg().GetType())
	}
	want := []lockdv1.LeaseEvent_Type{lockdv1.LeaseEvent_TYPE_GRANTED, lockdv1.LeaseEvent_TYPE_SYNCED, lockdv1.LeaseEvent_TYPE_LOST, lockdv1.LeaseEvent_TYPE_LEASE_ENDED}
	if fmt.Sprint(types) != fmt.Sprint(want) {
		t.Fatalf("lease events %v, want %v", types, want)
	}
}

// KeepAliveMany renews several leases with one call, through a follower
// too, and tells which leases it does not know.
func TestAPIKeepAliveMany(t *testing.T) {
	ins := startInstances(t, 3)
	follower := followerOf(ins, waitLeader(t, ins))
	c := newClients(follower.url())
	a := grant(t, c, 600*time.Millisecond, "a")
	b := grant(t, c, 600*time.Millisecond, "b")
	const unknown = 987654
	for range 10 {
		time.Sleep(150 * time.Millisecond)
		resp, err := c.lease.KeepAliveMany(context.Background(), connect.NewRequest(&lockdv1.KeepAliveManyRequest{LeaseIds: []uint64{a, unknown, b}}))
		if err != nil {
			t.Fatalf("keep-alive of many through a follower: %v", err)
		}
		var got []string
		for _, r := range resp.Msg.GetResults() {
			got = append(got, fmt.Sprint(r.GetLeaseId(), r.GetFound(), r.GetTtl().AsDuration()))
		}
		want := []string{fmt.Sprint(a, true, 600*time.Millisecond), fmt.Sprint(unknown, false, time.Duration(0)), fmt.Sprint(b, true, 600*time.Millisecond)}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("results %v, want %v", got, want)
		}
	}
	// Four times the TTL after the grants: alive thanks to the keep-alives.
	for _, id := range []uint64{a, b} {
		if _, err := c.lease.Get(context.Background(), connect.NewRequest(&lockdv1.GetLeaseRequest{LeaseId: id})); err != nil {
			t.Fatalf("kept-alive lease %d is gone: %v", id, err)
		}
	}
}

func TestAPIKeepAliveOnFollowerReachesLeader(t *testing.T) {
	ins := startInstances(t, 3)
	follower := followerOf(ins, waitLeader(t, ins))
	c := newClients(follower.url())
	id := grant(t, c, 600*time.Millisecond, "kept")
	for range 10 {
		time.Sleep(150 * time.Millisecond)
		if _, err := c.lease.KeepAlive(context.Background(), connect.NewRequest(&lockdv1.KeepAliveRequest{LeaseId: id})); err != nil {
			t.Fatalf("keep-alive through a follower: %v", err)
		}
	}
	// 1.5s after the grant, four times the TTL: alive thanks to the
	// keep-alives.
	if _, err := c.lease.Get(context.Background(), connect.NewRequest(&lockdv1.GetLeaseRequest{LeaseId: id})); err != nil {
		t.Fatalf("the kept-alive lease is gone: %v", err)
	}
	eventually(t, 5*time.Second, "expiry without keep-alives", func() error {
		_, err := c.lease.Get(context.Background(), connect.NewRequest(&lockdv1.GetLeaseRequest{LeaseId: id}))
		if codeOf(err) != connect.CodeNotFound {
			return fmt.Errorf("lease still there (%v)", err)
		}
		return nil
	})
}

func TestAPILockDelayAndForceRelease(t *testing.T) {
	ins := startInstances(t, 1)
	c := newClients(ins[0].url())
	victim := grant(t, c, 5*time.Second, "victim")
	next := grant(t, c, 5*time.Second, "next")
	keepAlive(t, c, victim, 200*time.Millisecond)
	keepAlive(t, c, next, 200*time.Millisecond)
	held, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "fr", LeaseId: victim, LockDelay: durationpb.New(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := c.lease.Events(ctx, connect.NewRequest(&lockdv1.LeaseEventsRequest{LeaseId: victim}))
	if err != nil {
		t.Fatal(err)
	}
	events.Receive() // the current grant
	events.Receive() // synced
	if _, err := c.lock.ForceRelease(context.Background(), connect.NewRequest(&lockdv1.ForceReleaseRequest{Name: "fr", Reason: "stuck job"})); err != nil {
		t.Fatal(err)
	}
	if !events.Receive() || events.Msg().GetType() != lockdv1.LeaseEvent_TYPE_LOST || !strings.Contains(events.Msg().GetReason(), "stuck job") {
		t.Fatalf("the victim was not told: %v %v", events.Msg(), events.Err())
	}
	fence, err := c.lock.CheckFence(context.Background(), connect.NewRequest(&lockdv1.CheckFenceRequest{Name: "fr", Token: held.GetToken()}))
	if err != nil || fence.Msg.GetValid() {
		t.Fatalf("the broken grant's token is still valid (%v)", err)
	}
	d := describe(t, c, "fr")
	if d.GetDelayedUntil() == nil || !strings.Contains(d.GetDelayReason(), "stuck job") {
		t.Fatalf("no visible lock-delay after a force release: %v", d)
	}
	start := time.Now()
	r, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "fr", LeaseId: next})
	if err != nil || !r.GetGranted() {
		t.Fatal(r, err)
	}
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Fatalf("granted %v into a 1s lock-delay", took)
	}
}

func TestAPIElection(t *testing.T) {
	ins := startInstances(t, 1)
	c := newClients(ins[0].url())
	a := grant(t, c, 5*time.Second, "a")
	b := grant(t, c, 5*time.Second, "b")
	keepAlive(t, c, a, 200*time.Millisecond)
	keepAlive(t, c, b, 200*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	obs, err := c.election.Observe(ctx, connect.NewRequest(&lockdv1.ObserveRequest{Name: "db"}))
	if err != nil {
		t.Fatal(err)
	}
	next := func() *lockdv1.LeaderResponse {
		t.Helper()
		if !obs.Receive() {
			t.Fatalf("observe ended: %v", obs.Err())
		}
		return obs.Msg()
	}
	if first := next(); first.GetLeader() != nil {
		t.Fatalf("first observation %v, want no leader", first)
	}
	ca, err := c.election.Campaign(context.Background(), connect.NewRequest(&lockdv1.CampaignRequest{Name: "db", LeaseId: a, Value: []byte("a1")}))
	if err != nil {
		t.Fatal(err)
	}
	if o := next(); o.GetLeader().GetLeaseId() != a || string(o.GetLeader().GetValue()) != "a1" {
		t.Fatalf("observed %v, want a leading", o)
	}
	if !ca.Msg.GetElected() {
		t.Fatalf("a's campaign answered %v, not elected", ca.Msg)
	}
	// A wait of 0s leads at once or not at all, and leaves no candidate.
	for _, wait := range []time.Duration{0, 50 * time.Millisecond} {
		r, err := c.election.Campaign(context.Background(), connect.NewRequest(&lockdv1.CampaignRequest{Name: "db", LeaseId: b, Value: []byte("b0"), Wait: durationpb.New(wait)}))
		if err != nil || r.Msg.GetElected() || r.Msg.GetTerm() != 0 {
			t.Fatalf("b's campaign with wait %v of a led election: %v %v", wait, r, err)
		}
	}
	if d, err := c.lock.Describe(context.Background(), connect.NewRequest(&lockdv1.DescribeRequest{Name: "election/db"})); err != nil || len(d.Msg.GetWaiters()) != 0 {
		t.Fatalf("candidates left queued: %v %v", d, err)
	}
	bDone := make(chan *lockdv1.CampaignResponse, 1)
	go func() {
		r, _ := c.election.Campaign(context.Background(), connect.NewRequest(&lockdv1.CampaignRequest{Name: "db", LeaseId: b, Value: []byte("b1")}))
		bDone <- r.Msg
	}()
	if _, err := c.election.Proclaim(context.Background(), connect.NewRequest(&lockdv1.ProclaimRequest{Name: "db", LeaseId: a, Term: ca.Msg.GetTerm(), Value: []byte("a2")})); err != nil {
		t.Fatal(err)
	}
	if o := next(); string(o.GetLeader().GetValue()) != "a2" {
		t.Fatalf("observed %v after proclaim", o)
	}
	if _, err := c.election.Resign(context.Background(), connect.NewRequest(&lockdv1.ResignRequest{Name: "db", LeaseId: a, Term: ca.Msg.GetTerm()})); err != nil {
		t.Fatal(err)
	}
	br := <-bDone
	if br.GetTerm() <= ca.Msg.GetTerm() {
		t.Fatalf("b's term %d is not after a's %d", br.GetTerm(), ca.Msg.GetTerm())
	}
	o := next()
	if o.GetLeader() == nil {
		o = next() // the moment between resign and handover, if seen
	}
	if o.GetLeader().GetLeaseId() != b || o.GetLeader().GetTerm() != br.GetTerm() {
		t.Fatalf("observed %v, want b in term %d", o, br.GetTerm())
	}
	l, err := c.election.Leader(context.Background(), connect.NewRequest(&lockdv1.LeaderRequest{Name: "db"}))
	if err != nil || l.Msg.GetLeader().GetLeaseId() != b {
		t.Fatalf("leader %v %v", l, err)
	}
	if _, err := c.election.Proclaim(context.Background(), connect.NewRequest(&lockdv1.ProclaimRequest{Name: "db", LeaseId: a, Term: ca.Msg.GetTerm(), Value: []byte("stale")})); codeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("proclaim by a resigned leader: %v", err)
	}
}

func TestAPIWatchResumes(t *testing.T) {
	ins := startInstances(t, 1)
	c := newClients(ins[0].url())
	a := grant(t, c, 5*time.Second, "a")
	keepAlive(t, c, a, 200*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	w, err := c.lock.Watch(ctx, connect.NewRequest(&lockdv1.WatchRequest{Name: "w/", Prefix: true}))
	if err != nil {
		t.Fatal(err)
	}
	recv := func(w *connect.ServerStreamForClient[lockdv1.WatchEvent]) *lockdv1.WatchEvent {
		t.Helper()
		if !w.Receive() {
			t.Fatalf("watch ended: %v", w.Err())
		}
		return w.Msg()
	}
	if _, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "w/x", LeaseId: a}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.lock.Release(context.Background(), connect.NewRequest(&lockdv1.ReleaseRequest{Name: "w/x", LeaseId: a})); err != nil {
		t.Fatal(err)
	}
	var got []lockdv1.WatchEvent_Type
	var last uint64
	for len(got) < 3 {
		e := recv(w)
		if e.GetRevision() < last {
			t.Fatalf("revision went back: %d after %d", e.GetRevision(), last)
		}
		last = e.GetRevision()
		got = append(got, e.GetType())
	}
	want := []lockdv1.WatchEvent_Type{lockdv1.WatchEvent_TYPE_QUEUED, lockdv1.WatchEvent_TYPE_GRANTED, lockdv1.WatchEvent_TYPE_RELEASED}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v (an empty prefix has no state to send first)", got, want)
	}
	cancel()
	// Changes while disconnected are replayed on resume, with no state.
	if _, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "w/x", LeaseId: a}); err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	w2, err := c.lock.Watch(ctx2, connect.NewRequest(&lockdv1.WatchRequest{Name: "w/x", AfterRevision: last}))
	if err != nil {
		t.Fatal(err)
	}
	if e := recv(w2); e.GetType() != lockdv1.WatchEvent_TYPE_QUEUED || e.GetRevision() <= last {
		t.Fatalf("resumed with %v", e)
	}
	if e := recv(w2); e.GetType() != lockdv1.WatchEvent_TYPE_GRANTED || len(e.GetState().GetHolders()) != 1 {
		t.Fatalf("resumed with %v", e)
	}
	// A watch from scratch starts with the state.
	w3, err := c.lock.Watch(ctx2, connect.NewRequest(&lockdv1.WatchRequest{Name: "w/x"}))
	if err != nil {
		t.Fatal(err)
	}
	if e := recv(w3); e.GetType() != lockdv1.WatchEvent_TYPE_STATE || len(e.GetState().GetHolders()) != 1 {
		t.Fatalf("first event %v, want the state", e)
	}
}

func TestAPIHealthAndStatus(t *testing.T) {
	ins := startInstances(t, 1)
	hc := grpchealth.NewClient(h2c, ins[0].url(), connect.WithGRPC())
	resp, err := hc.Check(context.Background(), &grpchealth.CheckRequest{Service: lockdv1connect.LockServiceName})
	if err != nil || resp.Status != grpchealth.StatusServing {
		t.Fatalf("health: %v %v", resp, err)
	}
	st, err := newClients(ins[0].url()).cluster.Status(context.Background(), connect.NewRequest(&lockdv1.StatusRequest{}))
	if err != nil || st.Msg.GetState() != "leader" {
		t.Fatalf("status: %v %v", st, err)
	}
}

// cutLinks is a node.Faults that drops everything a node sends to peers
// while cut is set.
type cutLinks struct{ cut atomic.Bool }

func (c *cutLinks) Outbound(from, to uint64) (bool, time.Duration) { return c.cut.Load(), 0 }

// A leader cut off from its peers, but still reachable by clients, must not
// acknowledge keep-alives: another leader may already count the lease's TTL
// from before them.
func TestAPIIsolatedLeaderRefusesKeepAlives(t *testing.T) {
	links := []*cutLinks{{}, {}, {}}
	ins := startInstancesWith(t, 3, func(i int) node.Faults { return links[i] })
	leader := waitLeader(t, ins)
	c := newClients(leader.url())
	id := grant(t, c, 2*time.Second, "kept")
	if _, err := c.lease.KeepAlive(context.Background(), connect.NewRequest(&lockdv1.KeepAliveRequest{LeaseId: id})); err != nil {
		t.Fatal(err)
	}
	// Cut the leader off: it still believes it leads for a while.
	for i, in := range ins {
		if in == leader {
			links[i].cut.Store(true)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req := connect.NewRequest(&lockdv1.KeepAliveRequest{LeaseId: id})
	req.Header().Set("Lockd-Forwarded", "1") // answer here, do not forward
	if _, err := c.lease.KeepAlive(ctx, req); err == nil {
		t.Fatal("a leader cut off from its peers acknowledged a keep-alive")
	}
}
