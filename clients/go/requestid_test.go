package lockd_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path"
	"slices"
	"sync"
	"testing"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
	"github.com/lockd-io/lockd/internal/testcluster"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// idProxy is a loopback HTTP reverse proxy between an SDK client and one
// lockd node. It records the request id of every Acquire and Campaign that
// passes, and can lose replies: it forwards the request, lets the server
// answer it in full, then resets the client's stream instead of passing the
// answer on, as a connection broken after the server acted would.
type idProxy struct {
	t     *testing.T
	url   string
	proxy *httputil.ReverseProxy

	mu      sync.Mutex
	ids     map[string][]uint64 // method → request ids, in arrival order
	calls   map[string]int      // method → calls seen
	drop    map[string]int      // method → replies still to lose
	dropped map[string][]int    // method → HTTP status of each lost reply
}

func startIDProxy(t *testing.T, target string) *idProxy {
	t.Helper()
	u, err := url.Parse("http://" + target)
	if err != nil {
		t.Fatal(err)
	}
	up := &http.Transport{Protocols: new(http.Protocols)}
	up.Protocols.SetUnencryptedHTTP2(true)
	p := &idProxy{
		t:       t,
		ids:     map[string][]uint64{},
		calls:   map[string]int{},
		drop:    map[string]int{},
		dropped: map[string][]int{},
		proxy: &httputil.ReverseProxy{
			Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(u) },
			Transport:     up,
			FlushInterval: -1, // server streams (events, observe) pass at once
			ErrorLog:      log.New(io.Discard, "", 0),
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: p, Protocols: new(http.Protocols), ErrorLog: log.New(io.Discard, "", 0)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true) // the SDK speaks h2c
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close(); up.CloseIdleConnections() })
	p.url = "http://" + ln.Addr().String()
	return p
}

// loseReplies makes the proxy lose the next n replies to method.
func (p *idProxy) loseReplies(method string, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drop[method] += n
}

func (p *idProxy) requestIDs(method string) []uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.ids[method])
}

func (p *idProxy) callCount(method string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[method]
}

func (p *idProxy) lost(method string) []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.dropped[method])
}

func (p *idProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	method := path.Base(r.URL.Path)
	var msg interface {
		proto.Message
		GetRequestId() uint64
	}
	switch method {
	case "Acquire":
		msg = &lockdv1.AcquireRequest{}
	case "Campaign":
		msg = &lockdv1.CampaignRequest{}
	}
	if msg != nil {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		if err := decodeRequest(r.Header, body, msg); err != nil {
			p.t.Errorf("proxy: decoding a %s request (%s): %v", method, r.Header.Get("Content-Type"), err)
		}
		p.mu.Lock()
		p.ids[method] = append(p.ids[method], msg.GetRequestId())
		p.mu.Unlock()
	}
	p.mu.Lock()
	p.calls[method]++
	lose := p.drop[method] > 0
	if lose {
		p.drop[method]--
	}
	p.mu.Unlock()
	if !lose {
		p.proxy.ServeHTTP(w, r)
		return
	}
	// The server gets the request and answers it; the client never sees
	// the answer.
	rec := httptest.NewRecorder()
	p.proxy.ServeHTTP(rec, r)
	p.mu.Lock()
	p.dropped[method] = append(p.dropped[method], rec.Code)
	p.mu.Unlock()
	panic(http.ErrAbortHandler) // reset the stream
}

// decodeRequest decodes a unary Connect request body, in whichever codec
// and compression the client chose.
func decodeRequest(h http.Header, body []byte, msg proto.Message) error {
	if h.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return err
		}
		if body, err = io.ReadAll(zr); err != nil {
			return err
		}
	}
	switch ct := h.Get("Content-Type"); {
	case ct == "application/proto":
		return proto.Unmarshal(body, msg)
	case ct == "application/json":
		return protojson.Unmarshal(body, msg)
	default:
		return fmt.Errorf("unexpected content type %q", ct)
	}
}

// A Lock whose reply is lost is retried with the request id of its first
// attempt (seen on the wire, not inferred from the server's reentrancy):
// the retry finds the first attempt's grant, and the lock has one holder
// and no waiter. A later Lock of the same Mutex has a new id.
func TestRetriedAcquireReusesRequestID(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	_, eps := cluster(t, 1)
	c := newClient(t, eps)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := newSession(t, c, 5*time.Second, "a")
	ma := lockd.NewMutex(a, "sdk/reqid")
	if err := ma.Lock(ctx); err != nil {
		t.Fatal(err)
	}

	px := startIDProxy(t, eps[0])
	// Unary, so the proxy sees each call (TestRetriedLockDoesNotQueueTwice
	// loses a pipelined reply).
	cb := newClient(t, []string{px.url}, lockd.WithUnaryCalls())
	b := newSession(t, cb, 5*time.Second, "b")
	mb := lockd.NewMutex(b, "sdk/reqid")
	px.loseReplies("Acquire", 1)
	done := make(chan error, 1)
	go func() { done <- mb.Lock(ctx) }()
	testcluster.Eventually(t, 10*time.Second, "b queued", func() error {
		d, err := c.Describe(ctx, "sdk/reqid")
		if err != nil || len(d.GetWaiters()) != 1 || d.GetWaiters()[0].GetLeaseId() != b.ID() {
			return fmt.Errorf("%v %v", d, err)
		}
		return nil
	})
	if n := px.callCount("Acquire"); n != 1 {
		t.Fatalf("%d Acquire calls while b waits, want 1", n)
	}
	// The release grants b; the proxy loses the grant; b retries.
	if err := ma.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if lost := px.lost("Acquire"); len(lost) != 1 || lost[0] != http.StatusOK {
		t.Fatalf("lost Acquire replies (HTTP status each) %v, want one answered 200", lost)
	}
	ids := px.requestIDs("Acquire")
	if len(ids) != 2 {
		t.Fatalf("Acquire request ids %v, want the first attempt and one retry", ids)
	}
	if ids[0] == 0 || ids[1] != ids[0] {
		t.Fatalf("Acquire request ids %v: the retry must carry the first attempt's (non-zero) id", ids)
	}
	d, err := c.Describe(ctx, "sdk/reqid")
	if err != nil {
		t.Fatal(err)
	}
	if len(d.GetHolders()) != 1 || d.GetHolders()[0].GetLeaseId() != b.ID() || d.GetHolders()[0].GetToken() != mb.Token() || len(d.GetWaiters()) != 0 {
		t.Fatalf("after the retried lock: holders %v waiters %v (b holds token %d)", d.GetHolders(), d.GetWaiters(), mb.Token())
	}

	// A new Lock is a new request.
	if err := mb.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := mb.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if ids := px.requestIDs("Acquire"); len(ids) != 3 || ids[2] == ids[0] {
		t.Fatalf("Acquire request ids %v: a second Lock must not reuse the first one's id", ids)
	}
}

// A Campaign whose reply is lost is retried with the same request id, and
// the retry finds the leadership the first attempt won.
func TestRetriedCampaignReusesRequestID(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	_, eps := cluster(t, 1)
	c := newClient(t, eps)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := newSession(t, c, 5*time.Second, "a")
	ea := lockd.NewElection(a, "sdk-reqid")
	if err := ea.Campaign(ctx, []byte("a")); err != nil {
		t.Fatal(err)
	}

	px := startIDProxy(t, eps[0])
	// Unary, so the proxy sees each call (TestRetriedLockDoesNotQueueTwice
	// loses a pipelined reply).
	cb := newClient(t, []string{px.url}, lockd.WithUnaryCalls())
	b := newSession(t, cb, 5*time.Second, "b")
	eb := lockd.NewElection(b, "sdk-reqid")
	px.loseReplies("Campaign", 1)
	done := make(chan error, 1)
	go func() { done <- eb.Campaign(ctx, []byte("b")) }()
	testcluster.Eventually(t, 10*time.Second, "b's campaign queued", func() error {
		leases, _, err := c.Leases(ctx, "", 0)
		if err != nil {
			return err
		}
		for _, l := range leases {
			if l.GetId() == b.ID() && len(l.GetWaiting()) == 1 {
				return nil
			}
		}
		return fmt.Errorf("b does not wait: %v", leases)
	})
	if n := px.callCount("Campaign"); n != 1 {
		t.Fatalf("%d Campaign calls while b waits, want 1", n)
	}
	if err := ea.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if lost := px.lost("Campaign"); len(lost) != 1 || lost[0] != http.StatusOK {
		t.Fatalf("lost Campaign replies (HTTP status each) %v, want one answered 200", lost)
	}
	ids := px.requestIDs("Campaign")
	if len(ids) != 2 || ids[0] == 0 || ids[1] != ids[0] {
		t.Fatalf("Campaign request ids %v: want two, the retry carrying the first attempt's (non-zero) id", ids)
	}
	l, err := c.LeaderOf(ctx, "sdk-reqid")
	if err != nil {
		t.Fatal(err)
	}
	if l == nil || l.LeaseID != b.ID() || l.Term != eb.Term() || string(l.Value) != "b" {
		t.Fatalf("leader after the retried campaign %+v, want b's lease %d in term %d", l, b.ID(), eb.Term())
	}
	leases, _, err := c.Leases(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		if len(l.GetWaiting()) != 0 {
			t.Fatalf("lease %d still waits for %v after the retried campaign", l.GetId(), l.GetWaiting())
		}
	}
}

// GrantRequest has no request id: a NewSession whose reply is lost is
// retried as a new grant, and the first lease is left behind, unrenewed.
// This pins down the damage: the orphan expires within its TTL (and holds
// nothing meanwhile), and the session NewSession returns is a live one.
func TestRetriedNewSessionOrphanExpires(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	_, eps := cluster(t, 1)
	c := newClient(t, eps)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	px := startIDProxy(t, eps[0])
	px.loseReplies("Grant", 1)
	cb := newClient(t, []string{px.url})
	const ttl = 2 * time.Second
	s := newSession(t, cb, ttl, "retried")
	if lost := px.lost("Grant"); len(lost) != 1 || lost[0] != http.StatusOK {
		t.Fatalf("lost Grant replies (HTTP status each) %v, want one answered 200", lost)
	}
	owned := func() []uint64 {
		leases, _, err := c.Leases(ctx, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		var ids []uint64
		for _, l := range leases {
			if l.GetOwner() == "retried" {
				ids = append(ids, l.GetId())
			}
		}
		return ids
	}
	ids := owned()
	if !slices.Contains(ids, s.ID()) {
		t.Fatalf("the session's lease %d is not listed: %v", s.ID(), ids)
	}
	t.Logf("leases after a NewSession whose first reply was lost: %v (the session's is %d)", ids, s.ID())
	start := time.Now()
	testcluster.Eventually(t, ttl+3*time.Second, "the orphan expired", func() error {
		if ids := owned(); len(ids) != 1 {
			return fmt.Errorf("leases %v", ids)
		}
		return nil
	})
	if len(ids) > 1 {
		t.Logf("orphan lease gone %v after the retry", time.Since(start).Round(10*time.Millisecond))
	}
	if err := s.Err(); err != nil || !slices.Equal(owned(), []uint64{s.ID()}) {
		t.Fatalf("the session's own lease did not survive: %v %v", err, owned())
	}
}

// Election.Observe is Client.Observe for the election's name: the current
// state at once, then each change, whether or not the session campaigns.
func TestElectionObserve(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	_, eps := cluster(t, 1)
	c := newClient(t, eps)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watcher := lockd.NewElection(newSession(t, c, 5*time.Second, "watcher"), "sdk-election-observe")
	obs := watcher.Observe(ctx)
	next := func() lockd.Observation {
		t.Helper()
		select {
		case o, ok := <-obs:
			if !ok {
				t.Fatal("the observation channel closed")
			}
			return o
		case <-time.After(10 * time.Second):
			t.Fatal("no observation within 10s")
		}
		panic("unreachable")
	}
	if o := next(); o.Leader != nil {
		t.Fatalf("first observation %+v, want no leader", o.Leader)
	}
	leader := newSession(t, c, 5*time.Second, "leader")
	e := lockd.NewElection(leader, "sdk-election-observe")
	if err := e.Campaign(ctx, []byte("primary")); err != nil {
		t.Fatal(err)
	}
	o := next()
	if o.Leader == nil || string(o.Leader.Value) != "primary" || o.Leader.LeaseID != leader.ID() || o.Leader.Term != e.Term() || o.Leader.Owner != "leader" {
		t.Fatalf("observed %+v, want the leader's value, lease, term and owner", o.Leader)
	}
	if err := e.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if o2 := next(); o2.Leader != nil || o2.Revision <= o.Revision {
		t.Fatalf("observed %+v at revision %d after the resignation (previous revision %d), want no leader", o2.Leader, o2.Revision, o.Revision)
	}
	cancel()
	closed := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-obs:
			if !ok {
				return
			}
		case <-closed:
			t.Fatal("the observation channel was not closed after ctx ended")
		}
	}
}
