package lockd_test

import (
	"bufio"
	"context"
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

// A Lock whose reply is lost is retried with the same request id: the retry
// finds the first attempt's waiter and grant, and nothing queues twice.
func TestRetriedLockDoesNotQueueTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test")
	}
	_, eps := cluster(t, 3)
	c := newClient(t, eps)
	a := newSession(t, c, 5*time.Second, "a")
	ma := lockd.NewMutex(a, "sdk/retried")
	ctx := context.Background()
	if err := ma.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	drop := &dropFirstAcquireReply{next: tr}
	cb := newClient(t, eps, lockd.WithHTTPClient(&http.Client{Transport: drop}))
	b := newSession(t, cb, 5*time.Second, "b")
	mb := lockd.NewMutex(b, "sdk/retried")
	done := make(chan error, 1)
	go func() { done <- mb.Lock(ctx) }()
	testcluster.Eventually(t, 10*time.Second, "b queued", func() error {
		d, err := c.Describe(ctx, "sdk/retried")
		if err != nil || len(d.GetWaiters()) != 1 {
			return fmt.Errorf("%v %v", d, err)
		}
		return nil
	})
	// Releasing grants b; b's reply is lost; b retries and must find its
	// grant rather than queue again.
	if err := ma.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !drop.dropped.Load() {
		t.Fatal("no reply was dropped")
	}
	d, err := c.Describe(ctx, "sdk/retried")
	if err != nil {
		t.Fatal(err)
	}
	if len(d.GetHolders()) != 1 || d.GetHolders()[0].GetLeaseId() != b.ID() || d.GetHolders()[0].GetToken() != mb.Token() || len(d.GetWaiters()) != 0 {
		t.Fatalf("after the retried lock: holders %v waiters %v (b holds token %d)", d.GetHolders(), d.GetWaiters(), mb.Token())
	}
}

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
