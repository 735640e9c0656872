package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// multi is a client of a whole cluster: each call goes to the first node
// that answers, starting from a preferred one, so a dead node is skipped.
type multi struct {
	nodes []clients
}

func newMulti(procs []*proc) *multi {
	m := &multi{}
	for _, p := range procs {
		m.nodes = append(m.nodes, newClients("http://"+p.Addr))
	}
	return m
}

// retriable: the node is down or cannot serve; another may.
func retriable(err error) bool {
	switch codeOf(err) {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeInternal, connect.CodeCanceled:
		return true
	case connect.CodeDeadlineExceeded:
		return false
	}
	return false
}

func (m *multi) do(ctx context.Context, start int, call func(c clients) error) error {
	var err error
	for attempt := 0; ctx.Err() == nil; attempt++ {
		c := m.nodes[(start+attempt)%len(m.nodes)]
		if err = call(c); err == nil || !retriable(err) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err == nil {
		err = ctx.Err()
	}
	return err
}

// hold is one grant as a client saw it: from the moment Acquire returned to
// the moment it sent Release.
type hold struct {
	lease      uint64
	token      uint64
	start, end time.Time
}

// 50 clients on a 3-process cluster contend for one lock: no two holds
// overlap, tokens increase, and grants come in queue order.
func TestClusterContention(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test; runs without -short")
	}
	procs := startCluster(t, 3, "--heartbeat-interval", "50ms", "--election-timeout", "500ms")
	leaderOf(t, procs, 20*time.Second)
	m := newMulti(procs)
	const clientsN, rounds, name = 50, 4, "contended/lock"

	// A watcher records the queue and grant order from the lock's events.
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	watch, err := m.nodes[0].lock.Watch(wctx, connect.NewRequest(&lockdv1.WatchRequest{Name: name}))
	if err != nil {
		t.Fatal(err)
	}
	var events []*lockdv1.WatchEvent
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for watch.Receive() {
			events = append(events, watch.Msg())
		}
	}()

	var (
		mu    sync.Mutex
		holds []hold
		wg    sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range clientsN {
		wg.Add(1)
		go func() {
			defer wg.Done()
			home := i % len(procs)
			var id uint64
			if err := m.do(ctx, home, func(c clients) error {
				r, err := c.lease.Grant(ctx, connect.NewRequest(&lockdv1.GrantRequest{Ttl: durationpb.New(5 * time.Second), Owner: fmt.Sprintf("client-%d", i)}))
				if err == nil {
					id = r.Msg.GetLeaseId()
				}
				return err
			}); err != nil {
				t.Errorf("client %d: grant: %v", i, err)
				return
			}
			stop := keepAlive(t, m.nodes[home], id, time.Second)
			defer stop()
			for r := range rounds {
				var resp *lockdv1.AcquireResponse
				err := m.do(ctx, home, func(c clients) error {
					var err error
					resp, err = acquire(ctx, c, &lockdv1.AcquireRequest{Name: name, LeaseId: id, RequestId: uint64(2*r + 1)})
					return err
				})
				if err != nil || !resp.GetGranted() {
					t.Errorf("client %d round %d: acquire: %v %v", i, r, resp, err)
					return
				}
				h := hold{lease: id, token: resp.GetToken(), start: time.Now()}
				time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
				h.end = time.Now()
				if err := m.do(ctx, home, func(c clients) error {
					_, err := c.lock.Release(ctx, connect.NewRequest(&lockdv1.ReleaseRequest{Name: name, LeaseId: id, Token: h.token, RequestId: uint64(2*r + 2)}))
					return err
				}); err != nil {
					t.Errorf("client %d round %d: release: %v", i, r, err)
					return
				}
				mu.Lock()
				holds = append(holds, h)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if len(holds) != clientsN*rounds {
		t.Fatalf("%d holds, want %d", len(holds), clientsN*rounds)
	}
	sort.Slice(holds, func(i, j int) bool { return holds[i].start.Before(holds[j].start) })
	for i := 1; i < len(holds); i++ {
		prev, cur := holds[i-1], holds[i]
		if !cur.start.After(prev.end) {
			t.Errorf("overlapping holds: lease %d (token %d) held from %v, lease %d (token %d) held until %v",
				cur.lease, cur.token, cur.start.Format(time.StampMicro), prev.lease, prev.token, prev.end.Format(time.StampMicro))
		}
		if cur.token <= prev.token {
			t.Errorf("token %d granted after token %d", cur.token, prev.token)
		}
	}

	// Grants in queue order, as the watcher saw them.
	time.Sleep(200 * time.Millisecond)
	wcancel()
	<-watchDone
	var queue []uint64
	grants := 0
	for _, e := range events {
		switch e.GetType() {
		case lockdv1.WatchEvent_TYPE_QUEUED:
			queue = append(queue, e.GetLeaseId())
		case lockdv1.WatchEvent_TYPE_WITHDRAWN:
			for i, l := range queue {
				if l == e.GetLeaseId() {
					queue = append(queue[:i], queue[i+1:]...)
					break
				}
			}
		case lockdv1.WatchEvent_TYPE_GRANTED:
			grants++
			if len(queue) == 0 || queue[0] != e.GetLeaseId() {
				t.Fatalf("grant %d at revision %d went to lease %d; the head of the queue was %v", grants, e.GetRevision(), e.GetLeaseId(), queue[:min(3, len(queue))])
			}
			queue = queue[1:]
		}
	}
	if grants != clientsN*rounds {
		t.Fatalf("the watcher saw %d grants, want %d", grants, clientsN*rounds)
	}
	t.Logf("%d grants to %d clients over 3 processes: no overlap, FIFO", grants, clientsN)
}

// helperHolder is the client process of TestClusterHolderKilled: it takes a
// lock and keeps its lease alive until killed.
func helperHolder() {
	c := newClients(os.Getenv("LOCKD_HELPER_URL"))
	ttl, _ := time.ParseDuration(os.Getenv("LOCKD_HELPER_TTL"))
	ctx := context.Background()
	g, err := c.lease.Grant(ctx, connect.NewRequest(&lockdv1.GrantRequest{Ttl: durationpb.New(ttl), Owner: "helper"}))
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	id := g.Msg.GetLeaseId()
	r, err := acquire(ctx, c, &lockdv1.AcquireRequest{Name: os.Getenv("LOCKD_HELPER_LOCK"), LeaseId: id})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Printf("HOLDING %d %d\n", id, r.GetToken())
	for {
		time.Sleep(ttl / 10)
		c.lease.KeepAlive(ctx, connect.NewRequest(&lockdv1.KeepAliveRequest{LeaseId: id}))
	}
}

// SIGKILL of the process holding a lock gets the next waiter granted once
// the lease expires: not before its TTL, and within TTL + 1s.
func TestClusterHolderKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test; runs without -short")
	}
	procs := startCluster(t, 3, "--heartbeat-interval", "50ms", "--election-timeout", "500ms")
	leaderOf(t, procs, 20*time.Second)
	const ttl = 2 * time.Second
	holder := exec.Command(os.Args[0])
	holder.Env = append(os.Environ(), "LOCKD_HELPER=holder", "LOCKD_HELPER_URL=http://"+procs[1].Addr, "LOCKD_HELPER_TTL="+ttl.String(), "LOCKD_HELPER_LOCK=jobs/held")
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	lines := bufio.NewScanner(out)
	var token uint64
	for lines.Scan() {
		if f := strings.Fields(lines.Text()); len(f) == 3 && f[0] == "HOLDING" {
			token, _ = strconv.ParseUint(f[2], 10, 64)
			break
		}
	}
	if token == 0 {
		t.Fatal("the holder process did not take the lock")
	}
	c := newClients("http://" + procs[2].Addr)
	waiter := grant(t, c, 5*time.Second, "waiter")
	keepAlive(t, c, waiter, time.Second)
	granted := make(chan time.Time, 1)
	go func() {
		r, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "jobs/held", LeaseId: waiter})
		if err == nil && r.GetGranted() {
			granted <- time.Now()
		}
	}()
	time.Sleep(ttl) // the holder keeps its lease alive meanwhile
	if len(granted) != 0 {
		t.Fatal("the waiter was granted while the holder lived")
	}
	killed := time.Now()
	holder.Process.Signal(syscall.SIGKILL)
	select {
	case at := <-granted:
		took := at.Sub(killed)
		// The holder's last keep-alive was at most ttl/10 before the kill.
		if took < ttl-ttl/10-50*time.Millisecond {
			t.Fatalf("granted %v after the kill, before the lease's TTL of %v ran out", took, ttl)
		}
		if took > ttl+time.Second {
			t.Fatalf("granted %v after the kill, more than TTL + 1s", took)
		}
		t.Logf("next waiter granted %v after SIGKILL of the holder (TTL %v)", took, ttl)
	case <-time.After(ttl + 5*time.Second):
		t.Fatal("the waiter was never granted")
	}
}

// SIGKILL of the leader node while a client holds a lock and keeps its lease
// alive loses no lock and expires no lease early.
func TestClusterLeaderKilledWhileHeld(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test; runs without -short")
	}
	procs := startCluster(t, 3, "--heartbeat-interval", "50ms", "--election-timeout", "500ms")
	leader := leaderOf(t, procs, 20*time.Second)
	m := newMulti(procs)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ttl = 2 * time.Second
	grantVia := func(owner string) uint64 {
		var id uint64
		if err := m.do(ctx, 0, func(c clients) error {
			r, err := c.lease.Grant(ctx, connect.NewRequest(&lockdv1.GrantRequest{Ttl: durationpb.New(ttl), Owner: owner}))
			if err == nil {
				id = r.Msg.GetLeaseId()
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	holder, waiter := grantVia("holder"), grantVia("waiter")
	// Keep both alive through whichever node answers, every TTL/4.
	var kaErrs sync.Map
	for _, id := range []uint64{holder, waiter} {
		go func() {
			for ctx.Err() == nil {
				time.Sleep(ttl / 4)
				err := m.do(ctx, 0, func(c clients) error {
					_, err := c.lease.KeepAlive(ctx, connect.NewRequest(&lockdv1.KeepAliveRequest{LeaseId: id}))
					return err
				})
				if codeOf(err) == connect.CodeNotFound {
					kaErrs.Store(id, err)
				}
			}
		}()
	}
	var held *lockdv1.AcquireResponse
	if err := m.do(ctx, 0, func(c clients) error {
		var err error
		held, err = acquire(ctx, c, &lockdv1.AcquireRequest{Name: "held/through/failover", LeaseId: holder, RequestId: 1})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	waiterGranted := make(chan struct{})
	go func() {
		m.do(ctx, 0, func(c clients) error {
			_, err := acquire(ctx, c, &lockdv1.AcquireRequest{Name: "held/through/failover", LeaseId: waiter, RequestId: 1})
			if err == nil {
				close(waiterGranted)
			}
			return err
		})
	}()
	leader.Signal(syscall.SIGKILL)
	leader.Wait(10 * time.Second)
	var rest []*proc
	for _, p := range procs {
		if p != leader {
			rest = append(rest, p)
		}
	}
	leaderOf(t, rest, 20*time.Second)
	// Three TTLs after the failover the holder must still hold.
	time.Sleep(3 * ttl)
	select {
	case <-waiterGranted:
		t.Fatal("the waiter was granted: the holder's lease expired while it was kept alive")
	default:
	}
	kaErrs.Range(func(k, v any) bool {
		t.Errorf("lease %v: keep-alive answered %v", k, v)
		return true
	})
	var valid bool
	if err := m.do(ctx, 1, func(c clients) error {
		r, err := c.lock.CheckFence(ctx, connect.NewRequest(&lockdv1.CheckFenceRequest{Name: "held/through/failover", Token: held.GetToken()}))
		if err == nil {
			valid = r.Msg.GetValid()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !valid {
		t.Fatal("the holder's token is no longer valid after the leader failover")
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("ran out of time")
	}
}
