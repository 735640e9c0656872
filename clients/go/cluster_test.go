package lockd_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
	"github.com/lockd-io/lockd/internal/testcluster"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"google.golang.org/protobuf/proto"
)

var lockdBin string

func TestMain(m *testing.M) {
	if os.Getenv("LOCKD_HELPER") == "paused-holder" {
		// Run as a client process for a test, not as tests.
		pausedHolder()
		return
	}
	testcluster.Main(m, &lockdBin)
}

func cluster(t *testing.T, size int) ([]*testcluster.Proc, []string) {
	t.Helper()
	procs := testcluster.StartCluster(t, lockdBin, size, "--heartbeat-interval", "50ms", "--election-timeout", "500ms")
	testcluster.LeaderOf(t, procs, 20*time.Second)
	var eps []string
	for _, p := range procs {
		eps = append(eps, p.Addr)
	}
	return procs, eps
}

func newClient(t testing.TB, eps []string, opts ...lockd.Option) *lockd.Client {
	t.Helper()
	c, err := lockd.New(eps, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func newSession(t testing.TB, c *lockd.Client, ttl time.Duration, owner string) *lockd.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.NewSession(ctx, lockd.WithTTL(ttl), lockd.WithOwner(owner))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// A held Mutex survives SIGKILL of the leader node: the session rides out
// the failover, nobody else is granted, and the token stays valid.
func TestMutexSurvivesLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	procs, eps := cluster(t, 3)
	c := newClient(t, eps)
	holder := newSession(t, c, 3*time.Second, "holder")
	m := lockd.NewMutex(holder, "sdk/failover")
	ctx := context.Background()
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	other := newSession(t, c, 3*time.Second, "other")
	m2 := lockd.NewMutex(other, "sdk/failover")
	var otherGot atomic.Bool
	otherErr := make(chan error, 1)
	go func() {
		err := m2.Lock(ctx)
		if err == nil {
			otherGot.Store(true)
		}
		otherErr <- err
	}()
	leader := testcluster.LeaderOf(t, procs, 10*time.Second)
	leader.Signal(syscall.SIGKILL)
	leader.Wait(10 * time.Second)
	testcluster.LeaderOf(t, testcluster.Others(procs, leader), 20*time.Second)
	time.Sleep(3 * holder.TTL())
	if err := holder.Err(); err != nil {
		t.Fatalf("the holder's session ended across the failover: %v", err)
	}
	if err := m.Context().Err(); err != nil {
		t.Fatalf("the grant's context ended: %v", context.Cause(m.Context()))
	}
	if otherGot.Load() {
		t.Fatal("double grant: the other session got the lock while the holder held it")
	}
	valid, err := c.CheckFence(ctx, "sdk/failover", m.Token())
	if err != nil || !valid {
		t.Fatalf("the holder's token is not valid after the failover (%v)", err)
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-otherErr:
		if err != nil {
			t.Fatalf("the other session's Lock failed: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the other session was not granted within 10s of the release")
	}
	if m2.Token() <= m.Token() && m2.Token() != 0 {
		t.Fatalf("token %d after %d", m2.Token(), m.Token())
	}
}

// pausedHolder is the client process of TestSessionPausedReportsLossFirst.
func pausedHolder() {
	fail := func(err error) { fmt.Println("ERROR", err); os.Exit(1) }
	c, err := lockd.New(strings.Split(os.Getenv("LOCKD_ENDPOINTS"), ","))
	if err != nil {
		fail(err)
	}
	s, err := c.NewSession(context.Background(), lockd.WithTTL(2*time.Second))
	if err != nil {
		fail(err)
	}
	m := lockd.NewMutex(s, "sdk/paused")
	if err := m.Lock(context.Background()); err != nil {
		fail(err)
	}
	fmt.Printf("HOLDING %d\n", m.Token())
	<-m.Context().Done()
	// Report the local deadline by which it stopped trusting the grant, and
	// when it noticed.
	fmt.Printf("LOST %d %d\n", s.Deadline().UnixNano(), time.Now().UnixNano())
}

// A session whose client process is paused past its TTL reports the loss,
// with a local deadline before any other client was granted the lock.
func TestSessionPausedReportsLossFirst(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	_, eps := cluster(t, 3)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "LOCKD_HELPER=paused-holder", "LOCKD_ENDPOINTS="+strings.Join(eps, ","))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGCONT); cmd.Process.Kill(); cmd.Wait() })
	lines := bufio.NewReader(out)
	first, err := lines.ReadString('\n')
	if err != nil || !strings.HasPrefix(first, "HOLDING") {
		t.Fatalf("helper: %q %v", first, err)
	}
	c := newClient(t, eps)
	other := newSession(t, c, 5*time.Second, "other")
	m := lockd.NewMutex(other, "sdk/paused")
	cmd.Process.Signal(syscall.SIGSTOP)
	if err := m.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	granted := time.Now()
	cmd.Process.Signal(syscall.SIGCONT)
	resumed := time.Now()
	lost, err := lines.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	f := strings.Fields(lost)
	if len(f) != 3 || f[0] != "LOST" {
		t.Fatalf("the paused holder did not report the loss: %q", lost)
	}
	deadline, _ := strconv.ParseInt(f[1], 10, 64)
	noticed, _ := strconv.ParseInt(f[2], 10, 64)
	if deadline >= granted.UnixNano() {
		t.Fatalf("the holder's local deadline %v is not before the other client's grant %v", time.Unix(0, deadline), granted)
	}
	if d := time.Unix(0, noticed).Sub(resumed); d > time.Second {
		t.Fatalf("the holder noticed the loss %v after it resumed", d)
	}
	t.Logf("local deadline %v before the other grant", granted.Sub(time.Unix(0, deadline)))
}

// Observe delivers the current state, then every leader change, in order.
func TestObserveDeliversEveryChange(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	_, eps := cluster(t, 3)
	c := newClient(t, eps)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	obs := c.Observe(ctx, "sdk-observed")
	if o := <-obs; o.Leader != nil {
		t.Fatalf("first observation %+v, want no leader", o)
	}
	var want []string
	for i := range 5 {
		s := newSession(t, c, 2*time.Second, fmt.Sprint("candidate-", i))
		e := lockd.NewElection(s, "sdk-observed")
		v := fmt.Sprint("v", i)
		if err := e.Campaign(ctx, []byte(v)); err != nil {
			t.Fatal(err)
		}
		want = append(want, v)
		if err := e.Proclaim(ctx, []byte(v+"-proclaimed")); err != nil {
			t.Fatal(err)
		}
		want = append(want, v+"-proclaimed")
		if err := e.Resign(ctx); err != nil {
			t.Fatal(err)
		}
		want = append(want, "none")
	}
	var got []string
	var lastRev uint64
	for len(got) < len(want) {
		select {
		case o := <-obs:
			if o.Revision < lastRev {
				t.Fatalf("revision %d after %d", o.Revision, lastRev)
			}
			lastRev = o.Revision
			if o.Leader == nil {
				got = append(got, "none")
			} else {
				got = append(got, string(o.Leader.Value))
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("observed %v, want %v", got, want)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("observed %v, want %v", got, want)
	}
}

// dropFirstAcquireReply lets the first Acquire reach the server and be
// answered, then loses the answer, as a broken connection would.
type dropFirstAcquireReply struct {
	next    http.RoundTripper
	dropped atomic.Bool
}

func (d *dropFirstAcquireReply) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := d.next.RoundTrip(r)
	if err != nil || !strings.HasSuffix(r.URL.Path, "/Acquire") || !d.dropped.CompareAndSwap(false, true) {
		return resp, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return nil, errors.New("connection reset by peer (test)")
}

// breakPipelineAtGrant passes Pipeline streams through until the first
// answer that grants an acquire, and breaks the stream in its place, as a
// connection reset would: the node answered, the client never hears it.
type breakPipelineAtGrant struct {
	next    http.RoundTripper
	dropped atomic.Bool
}

func (b *breakPipelineAtGrant) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := b.next.RoundTrip(r)
	if err != nil || !strings.HasSuffix(r.URL.Path, "/Pipeline") {
		return resp, err
	}
	resp.Body = &envelopeReader{ReadCloser: resp.Body, onGrant: func() error {
		if b.dropped.CompareAndSwap(false, true) {
			return errors.New("connection reset by peer (test)")
		}
		return nil
	}}
	return resp, nil
}

// envelopeReader reads a Connect stream one envelope (flags, length,
// message) at a time, and calls onGrant before passing on an envelope that
// grants an acquire; an error from it takes the envelope's place.
type envelopeReader struct {
	io.ReadCloser
	onGrant func() error
	pending []byte
}

func (e *envelopeReader) Read(p []byte) (int, error) {
	if len(e.pending) == 0 {
		head := make([]byte, 5)
		if _, err := io.ReadFull(e.ReadCloser, head); err != nil {
			return 0, err
		}
		msg := make([]byte, binary.BigEndian.Uint32(head[1:]))
		if _, err := io.ReadFull(e.ReadCloser, msg); err != nil {
			return 0, err
		}
		var resp lockdv1.PipelineResponse
		if head[0] == 0 && proto.Unmarshal(msg, &resp) == nil {
			for _, r := range resp.GetResults() {
				if r.GetAcquire().GetGranted() {
					if err := e.onGrant(); err != nil {
						return 0, err
					}
					break
				}
			}
		}
		e.pending = append(head, msg...)
	}
	n := copy(p, e.pending)
	e.pending = e.pending[n:]
	return n, nil
}

// A Lock whose reply is lost is retried with the same request id: the retry
// finds the first attempt's waiter and grant, and nothing queues twice;
// whether the reply was a unary call's or came on a Pipeline stream.
func TestRetriedLockDoesNotQueueTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	_, eps := cluster(t, 3)
	c := newClient(t, eps)
	newTransport := func() *http.Transport {
		tr := &http.Transport{Protocols: new(http.Protocols)}
		tr.Protocols.SetUnencryptedHTTP2(true)
		return tr
	}
	for _, tc := range []struct {
		name    string
		dropper interface {
			http.RoundTripper
			droppedOne() bool
		}
		opts []lockd.Option
	}{
		{"unary", &dropFirstAcquireReply{next: newTransport()}, []lockd.Option{lockd.WithUnaryCalls()}},
		{"pipelined", &breakPipelineAtGrant{next: newTransport()}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "sdk/retried/" + tc.name
			a := newSession(t, c, 5*time.Second, "a")
			ma := lockd.NewMutex(a, name)
			ctx := context.Background()
			if err := ma.Lock(ctx); err != nil {
				t.Fatal(err)
			}
			cb := newClient(t, eps, append(tc.opts, lockd.WithHTTPClient(&http.Client{Transport: tc.dropper}))...)
			b := newSession(t, cb, 5*time.Second, "b")
			mb := lockd.NewMutex(b, name)
			done := make(chan error, 1)
			go func() { done <- mb.Lock(ctx) }()
			testcluster.Eventually(t, 10*time.Second, "b queued", func() error {
				d, err := c.Describe(ctx, name)
				if err != nil || len(d.GetWaiters()) != 1 {
					return fmt.Errorf("%v %v", d, err)
				}
				return nil
			})
			// Releasing grants b; b's reply is lost; b retries and must find
			// its grant rather than queue again.
			if err := ma.Unlock(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if !tc.dropper.droppedOne() {
				t.Fatal("no reply was dropped")
			}
			d, err := c.Describe(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if len(d.GetHolders()) != 1 || d.GetHolders()[0].GetLeaseId() != b.ID() || d.GetHolders()[0].GetToken() != mb.Token() || len(d.GetWaiters()) != 0 {
				t.Fatalf("after the retried lock: holders %v waiters %v (b holds token %d)", d.GetHolders(), d.GetWaiters(), mb.Token())
			}
		})
	}
}

func (d *dropFirstAcquireReply) droppedOne() bool { return d.dropped.Load() }
func (b *breakPipelineAtGrant) droppedOne() bool  { return b.dropped.Load() }

// countKeepAlives counts the keep-alive calls a client makes.
type countKeepAlives struct {
	next        http.RoundTripper
	calls, many atomic.Int64
}

func (c *countKeepAlives) RoundTrip(r *http.Request) (*http.Response, error) {
	switch {
	case strings.HasSuffix(r.URL.Path, "/KeepAliveMany"):
		c.many.Add(1)
	case strings.HasSuffix(r.URL.Path, "/KeepAlive"):
		c.calls.Add(1)
	}
	return c.next.RoundTrip(r)
}

// The sessions of one client are kept alive together: 200 sessions with a
// TTL of 1.5s stay alive for 5s (they would expire in 1.5s without
// keep-alives) with far fewer calls than sessions times renewals, and a
// revoked one among them is reported lost.
func TestSessionsShareKeepAlives(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	_, eps := cluster(t, 3)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	count := &countKeepAlives{next: tr}
	c := newClient(t, eps, lockd.WithHTTPClient(&http.Client{Transport: count}))
	const n, ttl = 200, 1500 * time.Millisecond
	sessions := make([]*lockd.Session, n)
	for i := range sessions {
		sessions[i] = newSession(t, c, ttl, fmt.Sprint("s", i))
	}
	revoked := sessions[n-1]
	if err := newClient(t, eps).Revoke(context.Background(), revoked.ID()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-revoked.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a revoked session was not reported lost")
	}
	time.Sleep(5 * time.Second)
	for i, s := range sessions[:n-1] {
		if err := s.Err(); err != nil {
			t.Fatalf("session %d ended: %v", i, err)
		}
	}
	// Unbatched, 200 sessions renewing every 0.5s would make ~2000 calls
	// in these ~5.5s.
	if got := count.many.Load(); got == 0 || got > 200 {
		t.Fatalf("%d KeepAliveMany calls for %d sessions over 5s; want batches", got, n)
	}
	if got := count.calls.Load(); got != 0 {
		t.Fatalf("%d single KeepAlive calls; want none", got)
	}
	t.Logf("%d sessions kept alive with %d calls", n, count.many.Load())
}

// holdPipelineGrant holds back the first Pipeline answer that grants an
// acquire until told to let it through.
type holdPipelineGrant struct {
	next    http.RoundTripper
	held    chan struct{} // closed when a grant is held
	release chan struct{} // closed to let it through
	once    atomic.Bool
}

func (h *holdPipelineGrant) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := h.next.RoundTrip(r)
	if err != nil || !strings.HasSuffix(r.URL.Path, "/Pipeline") {
		return resp, err
	}
	resp.Body = &envelopeReader{ReadCloser: resp.Body, onGrant: func() error {
		if h.once.CompareAndSwap(false, true) {
			close(h.held)
			<-h.release
		}
		return nil
	}}
	return resp, nil
}

// A caller that gives up on a pipelined Lock after the node granted it,
// but before the answer came, is not left holding the lock: its cancel
// reaches the node after the grant, and the node undoes the grant.
func TestAbandonedGrantIsUndone(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	_, eps := cluster(t, 1)
	c := newClient(t, eps)
	a := newSession(t, c, 5*time.Second, "a")
	ma := lockd.NewMutex(a, "sdk/abandoned")
	ctx := context.Background()
	if err := ma.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	hold := &holdPipelineGrant{next: tr, held: make(chan struct{}), release: make(chan struct{})}
	cb := newClient(t, eps, lockd.WithHTTPClient(&http.Client{Transport: hold}))
	b := newSession(t, cb, 5*time.Second, "b")
	mb := lockd.NewMutex(b, "sdk/abandoned")
	bctx, giveUp := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mb.Lock(bctx) }()
	awaitWaiters(t, c, "sdk/abandoned", 1)
	if err := ma.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-hold.held:
	case <-time.After(10 * time.Second):
		t.Fatal("no grant for b")
	}
	giveUp() // b's caller leaves while its grant is on the way
	if err := <-done; err == nil {
		t.Fatal("Lock succeeded after its caller gave up")
	}
	testcluster.Eventually(t, 10*time.Second, "b's abandoned grant undone", func() error {
		d, err := c.Describe(ctx, "sdk/abandoned")
		if err != nil || len(d.GetHolders()) != 0 {
			return fmt.Errorf("%v %v", d, err)
		}
		return nil
	})
	close(hold.release) // the late answer is dropped
	if ok, err := mb.TryLock(ctx); err != nil || !ok {
		t.Fatalf("b's next try: %v %v", ok, err)
	}
	if err := b.Err(); err != nil {
		t.Fatalf("b's session: %v", err)
	}
}

// awaitWaiters waits until the lock name has n waiters.
func awaitWaiters(t *testing.T, c *lockd.Client, name string, n int) {
	t.Helper()
	testcluster.Eventually(t, 10*time.Second, fmt.Sprintf("%d waiters of %s", n, name), func() error {
		d, err := c.Describe(context.Background(), name)
		if err != nil || len(d.GetWaiters()) != n {
			return fmt.Errorf("%v %v", d, err)
		}
		return nil
	})
}

// cutOff fails every new request while on, as for a client cut off from
// the cluster.
type cutOff struct {
	next http.RoundTripper
	on   atomic.Bool
}

func (c *cutOff) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.on.Load() {
		return nil, errors.New("network is unreachable (test)")
	}
	return c.next.RoundTrip(r)
}

// A Lock whose node dies under it, while its caller gives up before any
// other node has taken the request, leaves no waiter behind: no node is
// left to withdraw the try, so the SDK does, once it reaches one. Without
// that, the waiter would stay queued, and be granted to nobody, until the
// session ended.
func TestLockAbandonedOnDeadNodeIsWithdrawn(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	procs, eps := cluster(t, 3)
	c := newClient(t, eps)
	const name = "sdk/orphaned"
	a := newSession(t, c, 5*time.Second, "a")
	ma := lockd.NewMutex(a, name)
	ctx := context.Background()
	if err := ma.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	b := abandonOnDeadLeader(t, procs, c, eps, name, func(ctx context.Context, b *lockd.Session) error {
		return lockd.NewMutex(b, name).Lock(ctx)
	})
	testcluster.Eventually(t, 30*time.Second, "b's orphaned waiter withdrawn", func() error {
		return heldBy(ctx, c, name, a)
	})
	if err := ma.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if d, err := c.Describe(ctx, name); err != nil || len(d.GetHolders()) != 0 {
		t.Fatalf("after a's release, the lock went to %v (%v): b gave up", d.GetHolders(), err)
	}
	if err := b.Err(); err != nil {
		t.Fatalf("b's session: %v", err)
	}
}

// abandonOnDeadLeader starts op, with a session of a client of its own,
// once lock has a holder; op's try then sits on the raft leader (the SDK
// writes there). When op has queued on lock, it cuts that client off from
// every node, SIGKILLs the leader and gives up on op, which must fail; then
// it lets the client reach the nodes left. It returns op's session.
func abandonOnDeadLeader(t *testing.T, procs []*testcluster.Proc, c *lockd.Client, eps []string, lock string, op func(context.Context, *lockd.Session) error) *lockd.Session {
	t.Helper()
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	cut := &cutOff{next: tr}
	cb := newClient(t, eps, lockd.WithHTTPClient(&http.Client{Transport: cut}))
	b := newSession(t, cb, 5*time.Second, "b")
	ctx, giveUp := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- op(ctx, b) }()
	awaitWaiters(t, c, lock, 1)
	leader := testcluster.LeaderOf(t, procs, 10*time.Second)
	cut.on.Store(true)
	leader.Signal(syscall.SIGKILL)
	leader.Wait(10 * time.Second)
	time.Sleep(300 * time.Millisecond) // while b's retries fail
	giveUp()
	if err := <-done; err == nil {
		t.Fatal("the call succeeded after its caller gave up")
	}
	cut.on.Store(false)
	return b
}

// heldBy says why lock is not held by s alone, with nobody waiting.
func heldBy(ctx context.Context, c *lockd.Client, lock string, s *lockd.Session) error {
	d, err := c.Describe(ctx, lock)
	if err != nil || len(d.GetWaiters()) != 0 || len(d.GetHolders()) != 1 || d.GetHolders()[0].GetLeaseId() != s.ID() {
		return fmt.Errorf("%v %v", d, err)
	}
	return nil
}

// A Campaign whose node dies under it, while its caller gives up before
// any other node has taken it, leaves no candidate behind, as a Lock leaves
// no waiter: otherwise the candidate could be elected later with nobody to
// lead, and keep the election from everyone until its session ended.
func TestCampaignAbandonedOnDeadNodeIsWithdrawn(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	procs, eps := cluster(t, 3)
	c := newClient(t, eps)
	const name = "sdk-orphaned"
	a := newSession(t, c, 5*time.Second, "a")
	ea := lockd.NewElection(a, name)
	ctx := context.Background()
	if err := ea.Campaign(ctx, []byte("a")); err != nil {
		t.Fatal(err)
	}
	b := abandonOnDeadLeader(t, procs, c, eps, "election/"+name, func(ctx context.Context, b *lockd.Session) error {
		return lockd.NewElection(b, name).Campaign(ctx, []byte("b"))
	})
	testcluster.Eventually(t, 30*time.Second, "b's orphaned candidacy withdrawn", func() error {
		return heldBy(ctx, c, "election/"+name, a)
	})
	if err := ea.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if l, err := c.LeaderOf(ctx, name); err != nil || l != nil {
		t.Fatalf("after a resigned, %+v leads (%v): b gave up", l, err)
	}
	if err := b.Err(); err != nil {
		t.Fatalf("b's session: %v", err)
	}
}

// CampaignWithin leads at once when it can, and otherwise waits no longer
// than its wait and leaves no candidacy behind.
func TestCampaignWithin(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	_, eps := cluster(t, 1)
	c := newClient(t, eps)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const name = "sdk-campaign-within"
	ea := lockd.NewElection(newSession(t, c, 5*time.Second, "a"), name)
	if ok, err := ea.CampaignWithin(ctx, []byte("a"), 0); err != nil || !ok || ea.Term() == 0 {
		t.Fatalf("CampaignWithin(0) of a free election: %v %v, term %d", ok, err, ea.Term())
	}
	eb := lockd.NewElection(newSession(t, c, 5*time.Second, "b"), name)
	if ok, err := eb.CampaignWithin(ctx, []byte("b"), 0); err != nil || ok {
		t.Fatalf("CampaignWithin(0) of a led election: %v %v", ok, err)
	}
	start := time.Now()
	if ok, err := eb.CampaignWithin(ctx, []byte("b"), 200*time.Millisecond); err != nil || ok || eb.Term() != 0 {
		t.Fatalf("CampaignWithin(200ms) of a led election: %v %v, term %d", ok, err, eb.Term())
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("CampaignWithin(200ms) gave up after %v", d)
	}
	if d, err := c.Describe(ctx, "election/"+name); err != nil || len(d.GetWaiters()) != 0 {
		t.Fatalf("candidates left queued: %v %v", d, err)
	}
	// A candidate that leads within its wait leads.
	won := make(chan error, 1)
	go func() {
		ok, err := eb.CampaignWithin(ctx, []byte("b"), 20*time.Second)
		if err == nil && !ok {
			err = errors.New("not elected within 20s")
		}
		won <- err
	}()
	awaitWaiters(t, c, "election/"+name, 1)
	if err := ea.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-won; err != nil {
		t.Fatal(err)
	}
	if l, err := c.LeaderOf(ctx, name); err != nil || l == nil || string(l.Value) != "b" || l.Term != eb.Term() {
		t.Fatalf("leader %+v (%v), want b in term %d", l, err, eb.Term())
	}
}
