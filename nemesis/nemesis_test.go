package nemesis

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/anishathalye/porcupine"
	lockd "github.com/lockd-io/lockd/clients/go"
	"github.com/lockd-io/lockd/clients/go/fence"
	"github.com/lockd-io/lockd/internal/testcluster"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"github.com/lockd-io/lockd/proto/lockd/v1/lockdv1connect"
	"google.golang.org/protobuf/types/known/durationpb"
)

var (
	flagDuration = flag.Duration("nemesis.duration", 0, "length of each nemesis run (default 30s, 8s with -short)")
	flagSeed     = flag.Uint64("nemesis.seed", 0, "random seed (default: from the clock)")
)

var (
	binDir  string
	binMu   sync.Mutex
	bins    = map[string]string{}
	summary = os.Getenv("LOCKD_NEMESIS_SUMMARY") // a file to append each run's summary line to
)

func TestMain(m *testing.M) {
	flag.Parse()
	var err error
	if binDir, err = os.MkdirTemp("", "lockd-nemesis-bin-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(binDir)
	os.Exit(code)
}

// binary builds (once) lockd with fault injection and the given bug tags.
func binary(t *testing.T, bugs ...string) string {
	t.Helper()
	tags := append([]string{"lockd_faults"}, bugs...)
	key := strings.Join(tags, ",")
	binMu.Lock()
	defer binMu.Unlock()
	if b, ok := bins[key]; ok {
		return b
	}
	b, err := testcluster.Build(binDir, tags...)
	if err != nil {
		t.Fatalf("building lockd -tags %s: %v", key, err)
	}
	bins[key] = b
	return b
}

func runLength() time.Duration {
	switch {
	case *flagDuration > 0:
		return *flagDuration
	case testing.Short():
		return 8 * time.Second
	}
	return 30 * time.Second
}

// TestNemesis runs the workload on 3- and 5-node clusters under every fault
// and requires zero anomalies.
func TestNemesis(t *testing.T) {
	for _, n := range []int{3, 5} {
		t.Run(fmt.Sprintf("%d-nodes", n), func(t *testing.T) {
			rep := run(t, runConfig{nodes: n, duration: runLength(), bin: binary(t), seed: seed()})
			if len(rep.anomalies) > 0 {
				t.Errorf("%d anomalies; history and logs in %s; first: %s", len(rep.anomalies), rep.saved, rep.anomalies[0])
			}
		})
	}
}

// Each checker catches a deliberately broken build.
func TestNemesisCatchesBrokenBuilds(t *testing.T) {
	for _, tc := range []struct {
		tag, want string
	}{
		{"lockd_bug_early_expiry", "expired early"},
		{"lockd_bug_barging", "head of the queue"},
		{"lockd_bug_token_reuse", "does not exceed token"},
		{"lockd_bug_lost_release", "is not linearizable"},
		{"lockd_bug_double_grant", "held it together"},
	} {
		t.Run(tc.tag, func(t *testing.T) {
			rep := run(t, runConfig{nodes: 3, duration: 8 * time.Second, bin: binary(t, tc.tag), seed: seed(), quiet: true})
			for _, a := range rep.anomalies {
				if strings.Contains(a, tc.want) {
					t.Logf("caught: %s (%d anomalies in all)", a, len(rep.anomalies))
					return
				}
			}
			t.Fatalf("the build with %s passed the checkers; anomalies: %q", tc.tag, rep.anomalies)
		})
	}
}

func seed() uint64 {
	if *flagSeed != 0 {
		return *flagSeed
	}
	return uint64(time.Now().UnixNano())
}

type runConfig struct {
	nodes    int
	duration time.Duration
	bin      string
	seed     uint64
	quiet    bool // a broken build: anomalies are expected, keep nothing
}

type report struct {
	anomalies []string
	saved     string
}

// recorder collects what the clients saw.
type recorder struct {
	t0 time.Time

	mu       sync.Mutex
	ops      []porcupine.Operation
	holds    []Hold
	expiries []Expiry
	queues   map[string][]QueueEvent
	counts   map[string]int
	problems []string // anomalies seen while running (fenced writes refused)
	tokens   map[string][]uint64
	retired  []*testcluster.Proc // members the nemesis replaced, for their logs
	faults   []string            // what the nemesis did, when
}

func (r *recorder) since() time.Duration { return time.Since(r.t0) }

func (r *recorder) count(what string) {
	r.mu.Lock()
	r.counts[what]++
	r.mu.Unlock()
}

func (r *recorder) op(client int, lock string, in MutexInput, out MutexOutput, call, ret time.Duration) {
	rt := int64(ret)
	if out.Unknown {
		rt = math.MaxInt64
	}
	r.mu.Lock()
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: int64(call), Return: rt, Metadata: lock})
	r.mu.Unlock()
}

func run(t *testing.T, cfg runConfig) report {
	procs := testcluster.StartCluster(t, cfg.bin, cfg.nodes, "--heartbeat-interval", "50ms", "--election-timeout", "500ms")
	testcluster.LeaderOf(t, procs, 30*time.Second)
	var eps []string
	for _, p := range procs {
		eps = append(eps, p.Addr)
	}
	rec := &recorder{t0: time.Now(), queues: map[string][]QueueEvent{}, counts: map[string]int{}, tokens: map[string][]uint64{}}
	mutexes := []string{"m/0", "m/1", "m/2"}

	runCtx, stopRun := context.WithTimeout(context.Background(), cfg.duration)
	defer stopRun()
	watchCtx, stopWatch := context.WithCancel(context.Background())
	var watchers sync.WaitGroup
	for _, name := range mutexes {
		watchers.Add(1)
		go func() { defer watchers.Done(); watchQueue(watchCtx, eps, name, rec) }()
	}
	var workers sync.WaitGroup
	guards := fence.NewGuard()
	for w := range 4 * len(mutexes) {
		workers.Add(1)
		go func() {
			defer workers.Done()
			work(runCtx, w, eps, rand.New(rand.NewPCG(cfg.seed, uint64(w))), mutexes[w%len(mutexes)], guards, rec)
		}()
	}
	faults := nemesis(runCtx, t, cfg.bin, procs, rec, rand.New(rand.NewPCG(cfg.seed, 99)))
	<-runCtx.Done()
	workers.Wait()

	// Everything healed and every client gone: the table must empty out
	// (no waiter or grant left behind) once the abandoned leases expire.
	var left []*lockdv1.DescribeResponse
	var listErr error = errors.New("not tried")
	listed := false
	c, _ := lockd.New(eps)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		l, _, err := c.List(ctx, "", "", 100)
		cancel()
		if err == nil {
			left, listed = l, true
			if len(left) == 0 {
				break
			}
		} else {
			listErr = err
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.Close()
	stopWatch()
	watchers.Wait()

	var anomalies []string
	if !listed {
		anomalies = append(anomalies, fmt.Sprintf("could not list the table after the run: %v", listErr))
	}
	for _, l := range left {
		anomalies = append(anomalies, fmt.Sprintf("%s still has %d holders and %d waiters after every client left", l.GetName(), len(l.GetHolders()), len(l.GetWaiters())))
	}
	anomalies = append(anomalies, rec.problems...)
	anomalies = append(anomalies, CheckMutualExclusion(rec.holds)...)
	anomalies = append(anomalies, CheckTokens(rec.holds)...)
	// Late expiries are a liveness matter: each leader change restarts every
	// lease's TTL, and the nemesis changes leaders every second or two, so
	// the bound is generous.
	anomalies = append(anomalies, CheckExpiries(rec.expiries, 30*time.Second)...)
	for _, name := range mutexes {
		anomalies = append(anomalies, CheckFIFO(name, rec.queues[name])...)
	}
	lin, inconclusive := CheckLinearizable(rec.ops, min(max(time.Minute, cfg.duration/4), 2*time.Minute))
	anomalies = append(anomalies, lin...)

	line := fmt.Sprintf("nemesis: %d nodes, %v, seed %d: %d mutex ops, %d grants, %d holds checked, %d expiries, %d queue events; faults: %s; anomalies: %d",
		cfg.nodes, cfg.duration, cfg.seed, len(rec.ops), rec.counts["grant"], len(rec.holds), len(rec.expiries), countQueue(rec.queues), faults, len(anomalies))
	if inconclusive {
		line += " (linearizability check inconclusive: timed out)"
	}
	t.Log(line)
	rep := report{anomalies: anomalies}
	if cfg.quiet {
		return rep
	}
	if summary != "" {
		if f, err := os.OpenFile(summary, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintln(f, line)
			f.Close()
		}
	}
	if len(anomalies) > 0 {
		rep.saved = save(t, rec, anomalies, procs)
	}
	return rep
}

func countQueue(q map[string][]QueueEvent) int {
	n := 0
	for _, evs := range q {
		n += len(evs)
	}
	return n
}

// save keeps the history, the anomalies and the servers' logs for diagnosis.
func save(t *testing.T, rec *recorder, anomalies []string, procs []*testcluster.Proc) string {
	dir, err := os.MkdirTemp("", "lockd-nemesis-failure-")
	if err != nil {
		return "(not saved: " + err.Error() + ")"
	}
	write := func(name string, v any) {
		b, _ := json.MarshalIndent(v, "", " ")
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	write("anomalies.json", anomalies)
	write("holds.json", rec.holds)
	write("expiries.json", rec.expiries)
	write("queues.json", rec.queues)
	write("nemesis.json", rec.faults)
	var ops []string
	for _, o := range rec.ops {
		ops = append(ops, fmt.Sprintf("%d %s %v %+v %+v %d %d", o.ClientId, o.Metadata, o.Input.(MutexInput).Kind, o.Input, o.Output, o.Call, o.Return))
	}
	write("ops.json", ops)
	for _, p := range slices.Concat(procs, rec.retired) {
		os.WriteFile(filepath.Join(dir, p.Name+".log"), []byte(p.Log.String()), 0o644)
	}
	return dir
}

// watchQueue follows a lock's queue from any node, resuming after the last
// revision it saw.
func watchQueue(ctx context.Context, eps []string, name string, rec *recorder) {
	var after uint64
	for i := 0; ctx.Err() == nil; i++ {
		c := lockdv1connect.NewLockServiceClient(h2c, "http://"+eps[i%len(eps)])
		stream, err := c.Watch(ctx, connect.NewRequest(&lockdv1.WatchRequest{Name: name, AfterRevision: after}))
		if err == nil {
			for stream.Receive() {
				e := stream.Msg()
				after = max(after, e.GetRevision())
				q := QueueEvent{Lease: e.GetLeaseId(), Revision: e.GetRevision()}
				switch e.GetType() {
				case lockdv1.WatchEvent_TYPE_STATE:
					q.Kind = "state"
					for _, w := range e.GetState().GetWaiters() {
						q.Queue = append(q.Queue, w.GetLeaseId())
					}
				case lockdv1.WatchEvent_TYPE_QUEUED:
					q.Kind = "queued"
				case lockdv1.WatchEvent_TYPE_WITHDRAWN:
					q.Kind = "withdrawn"
				case lockdv1.WatchEvent_TYPE_GRANTED:
					q.Kind = "granted"
				default:
					continue
				}
				rec.mu.Lock()
				rec.queues[name] = append(rec.queues[name], q)
				rec.mu.Unlock()
			}
			stream.Close()
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

var h2c = func() *http.Client {
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	tr.HTTP2 = &http.HTTP2Config{SendPingTimeout: time.Second, PingTimeout: time.Second}
	return &http.Client{Transport: tr}
}()

const sessionTTL = 3 * time.Second

// work is one client: it locks its mutex (blocking, timed or try), checks and
// uses its fencing token while holding, releases; it also takes semaphore
// slots, read and write locks, campaigns, checks other clients' tokens, and
// abandons leases to watch them expire.
func work(ctx context.Context, id int, eps []string, rng *rand.Rand, mutex string, guards *fence.Guard, rec *recorder) {
	c, err := lockd.New(eps)
	if err != nil {
		panic(err)
	}
	defer c.Close()
	// s is the live session, nil between one's end and the next's start.
	var s *lockd.Session
	newSession := func() bool {
		for ctx.Err() == nil {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			ns, err := c.NewSession(sctx, lockd.WithTTL(sessionTTL), lockd.WithOwner(fmt.Sprint("worker-", id)))
			cancel()
			if err == nil {
				s = ns
				return true
			}
		}
		return false
	}
	// endSession revokes the session; its end frees what it held.
	endSession := func() {
		if s == nil {
			return
		}
		defer func() { s = nil }()
		call := rec.since()
		cctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := s.Close(cctx)
		cancel()
		rec.op(id, mutex, MutexInput{Kind: End, Lease: s.ID()}, MutexOutput{Unknown: err != nil}, call, rec.since())
	}
	if !newSession() {
		return
	}
	defer func() { endSession() }()
	for ctx.Err() == nil {
		if s.Err() != nil {
			// Lost (presumed expired): the server cannot have ended it before
			// the local deadline, and may end it any time after.
			rec.op(id, mutex, MutexInput{Kind: End, Lease: s.ID()}, MutexOutput{Unknown: true}, s.Deadline().Sub(rec.t0), 0)
			rec.count("session-lost")
			if !newSession() {
				return
			}
		}
		switch r := rng.IntN(100); {
		case r < 55:
			if !mutexCycle(ctx, id, rng, s, mutex, guards, rec) {
				endSession()
				if !newSession() {
					return
				}
			}
		case r < 65:
			holdCycle(ctx, rng, s.ID(), lockd.NewSemaphore(s, "s/0", 2), "s/0", false, 2, rec)
		case r < 75:
			rw := lockd.NewRWMutex(s, "rw/0", 5)
			if id%2 == 0 {
				holdCycle(ctx, rng, s.ID(), rw.Reader(), "rw/0", false, 5, rec)
			} else {
				holdCycle(ctx, rng, s.ID(), rw.Writer(), "rw/0", true, 5, rec)
			}
		case r < 85:
			fenceCheck(ctx, id, rng, c, rec)
		case r < 95:
			campaign(ctx, s, rec)
		default:
			abandon(ctx, eps, rec)
		}
	}
}

// mutexCycle locks, uses and releases the worker's mutex. It returns false
// when an outcome was unknown, so the worker ends its session to make it
// definite.
func mutexCycle(ctx context.Context, id int, rng *rand.Rand, s *lockd.Session, name string, guards *fence.Guard, rec *recorder) bool {
	m := lockd.NewMutex(s, name)
	call := rec.since()
	var granted bool
	var err error
	switch rng.IntN(3) {
	case 0:
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = m.Lock(actx)
		cancel()
		granted = err == nil
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			err = fmt.Errorf("gave up: %w", err) // the server withdraws it, but when is unknown
		}
	case 1:
		granted, err = m.TryLock(ctx)
	default:
		granted, err = m.LockWithin(ctx, 300*time.Millisecond)
	}
	ret := rec.since()
	rec.count("acquire")
	if err != nil {
		rec.op(id, name, MutexInput{Kind: Acquire, Lease: s.ID()}, MutexOutput{Unknown: true}, call, ret)
		return false
	}
	rec.op(id, name, MutexInput{Kind: Acquire, Lease: s.ID()}, MutexOutput{Granted: granted, Token: m.Token()}, call, ret)
	if !granted {
		return true
	}
	rec.count("grant")
	token := m.Token()
	var lostAt time.Duration
	var lostMu sync.Mutex
	stop := context.AfterFunc(m.Context(), func() { lostMu.Lock(); lostAt = rec.since(); lostMu.Unlock() })
	defer stop()
	rec.mu.Lock()
	rec.tokens[name] = append(rec.tokens[name], token)
	rec.mu.Unlock()
	// Write to the fenced resource while the grant is believed valid.
	if m.Context().Err() == nil {
		if err := guards.Admit(name, token); err != nil && m.Context().Err() == nil {
			rec.mu.Lock()
			rec.problems = append(rec.problems, fmt.Sprintf("%s: the resource refused token %d of a holder that had not lost it: %v", name, token, err))
			rec.mu.Unlock()
		}
	}
	fcall := rec.since()
	fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	valid, ferr := s.Client().CheckFence(fctx, name, token)
	cancel()
	rec.op(id, name, MutexInput{Kind: Fence, Token: token}, MutexOutput{Unknown: ferr != nil, OK: valid}, fcall, rec.since())
	time.Sleep(time.Duration(rng.IntN(15)) * time.Millisecond)
	end := rec.since()
	lostMu.Lock()
	if lostAt != 0 && lostAt < end {
		end = lostAt
	}
	lostMu.Unlock()
	rec.mu.Lock()
	rec.holds = append(rec.holds, Hold{Lock: name, Lease: s.ID(), Token: token, Exclusive: true, Start: ret, End: end})
	rec.mu.Unlock()
	rcall := rec.since()
	uctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	err = m.Unlock(uctx)
	cancel()
	switch {
	case err == nil:
		rec.op(id, name, MutexInput{Kind: Release, Lease: s.ID(), Token: token}, MutexOutput{OK: true}, rcall, rec.since())
	case errors.Is(err, lockd.ErrLost):
		rec.op(id, name, MutexInput{Kind: Release, Lease: s.ID(), Token: token}, MutexOutput{OK: false}, rcall, rec.since())
	default:
		rec.op(id, name, MutexInput{Kind: Release, Lease: s.ID(), Token: token}, MutexOutput{Unknown: true}, rcall, rec.since())
		return false
	}
	return true
}

// holdCycle takes a semaphore slot or a side of a read-write lock for a
// moment and records the hold, by the session's lease.
func holdCycle(ctx context.Context, rng *rand.Rand, lease uint64, m *lockd.Mutex, name string, exclusive bool, capacity int, rec *recorder) {
	ok, err := m.LockWithin(ctx, 500*time.Millisecond)
	if err != nil || !ok {
		return
	}
	start := rec.since()
	time.Sleep(time.Duration(rng.IntN(10)) * time.Millisecond)
	end := rec.since()
	if m.Context().Err() == nil {
		rec.mu.Lock()
		rec.holds = append(rec.holds, Hold{Lock: name, Lease: lease, Token: m.Token(), Exclusive: exclusive, Capacity: capacity, Start: start, End: end})
		rec.mu.Unlock()
	}
	uctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	m.Unlock(uctx)
	cancel()
}

// fenceCheck asks whether some recent token of some mutex is still valid.
func fenceCheck(ctx context.Context, id int, rng *rand.Rand, c *lockd.Client, rec *recorder) {
	name := fmt.Sprint("m/", rng.IntN(3))
	rec.mu.Lock()
	toks := rec.tokens[name]
	var token uint64
	if len(toks) > 0 {
		token = toks[len(toks)-1-rng.IntN(min(len(toks), 3))]
	}
	rec.mu.Unlock()
	if token == 0 {
		return
	}
	call := rec.since()
	fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	valid, err := c.CheckFence(fctx, name, token)
	cancel()
	rec.op(id, name, MutexInput{Kind: Fence, Token: token}, MutexOutput{Unknown: err != nil, OK: valid}, call, rec.since())
}

// campaign tries to lead the election for a moment; a term is an exclusive
// hold of the election with the term as its token.
func campaign(ctx context.Context, s *lockd.Session, rec *recorder) {
	e := lockd.NewElection(s, "e0")
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	err := e.Campaign(cctx, []byte("v"))
	cancel()
	if err != nil {
		return
	}
	rec.count("term")
	start := rec.since()
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	e.Proclaim(pctx, []byte("w"))
	cancel()
	end := rec.since()
	if e.Context().Err() == nil {
		rec.mu.Lock()
		rec.holds = append(rec.holds, Hold{Lock: "election/e0", Lease: s.ID(), Token: e.Term(), Exclusive: true, Start: start, End: end})
		rec.mu.Unlock()
	}
	rctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	e.Resign(rctx)
	cancel()
}

// abandon grants a lease, keeps it alive a little, stops, and records when
// it was seen gone.
func abandon(ctx context.Context, eps []string, rec *recorder) {
	const ttl = 1500 * time.Millisecond
	c := lockdv1connect.NewLeaseServiceClient(h2c, "http://"+eps[rand.IntN(len(eps))])
	gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	g, err := c.Grant(gctx, connect.NewRequest(&lockdv1.GrantRequest{Ttl: durationpb.New(ttl), Owner: "abandoned"}))
	if err != nil {
		return
	}
	id := g.Msg.GetLeaseId()
	var lastSent time.Duration
	for range 2 {
		time.Sleep(ttl / 4)
		sent := rec.since()
		kctx, kcancel := context.WithTimeout(context.Background(), ttl/3)
		_, err := c.KeepAlive(kctx, connect.NewRequest(&lockdv1.KeepAliveRequest{LeaseId: id}))
		kcancel()
		if err == nil {
			lastSent = sent
		}
	}
	if lastSent == 0 {
		return // no keep-alive went through: nothing to hold the server to
	}
	rec.count("abandoned")
	// Poll (linearizable reads, any node) until it is gone.
	for i := 0; ; i++ {
		if rec.since()-lastSent > ttl+20*time.Second {
			return
		}
		node := lockdv1connect.NewLeaseServiceClient(h2c, "http://"+eps[i%len(eps)])
		rctx, rcancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := node.Get(rctx, connect.NewRequest(&lockdv1.GetLeaseRequest{LeaseId: id}))
		rcancel()
		if connect.CodeOf(err) == connect.CodeNotFound {
			rec.mu.Lock()
			rec.expiries = append(rec.expiries, Expiry{Lease: id, TTL: ttl, LastAckSent: lastSent, SeenGone: rec.since()})
			rec.mu.Unlock()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// replaceMember replaces procs[i] as an operator replaces a lost node:
// remove the member (the node must stop by itself), then add a member with
// a new name and an empty data dir at the same address as a learner, start
// it with --join, and promote it once it has caught up. The victim may be
// the leader.
func replaceMember(t *testing.T, bin string, procs []*testcluster.Proc, i, gen int) error {
	old := procs[i]
	var eps []string
	for _, p := range procs {
		if p != old {
			eps = append(eps, p.Addr)
		}
	}
	c, err := lockd.New(eps)
	if err != nil {
		return err
	}
	defer c.Close()
	// Each step is retried until it succeeds or its time is up: a change
	// may meet a leader election (one it caused, when the victim led).
	retry := func(what string, d time.Duration, f func(ctx context.Context) error) error {
		deadline := time.Now().Add(d)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := f(ctx)
			cancel()
			if err == nil {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: %w", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if err := retry("removing "+old.Name, 20*time.Second, func(ctx context.Context) error {
		_, err := c.RemoveMember(ctx, old.Name)
		if err != nil && strings.Contains(err.Error(), "not a member") {
			return nil // removed by an earlier try whose answer was lost
		}
		return err
	}); err != nil {
		return err
	}
	if _, exited := old.Wait(20 * time.Second); !exited {
		old.Signal(syscall.SIGKILL)
		old.Wait(10 * time.Second)
		return fmt.Errorf("%s still ran 20s after its removal", old.Name)
	}
	name := fmt.Sprintf("%sx%d", strings.SplitN(old.Name, "x", 2)[0], gen)
	url := "http://" + old.Addr
	if err := retry("adding "+name, 20*time.Second, func(ctx context.Context) error {
		_, err := c.AddMember(ctx, name, url, true)
		if err != nil && strings.Contains(err.Error(), "already") {
			return nil
		}
		return err
	}); err != nil {
		return err
	}
	var join []string
	for _, ep := range eps {
		join = append(join, "http://"+ep)
	}
	p := testcluster.Start(t, bin, name, old.Dir, old.Addr, "serve", "--name", name,
		"--data-dir", filepath.Join(old.Dir, name), "--listen", old.Addr, "--join", strings.Join(join, ","),
		"--heartbeat-interval", "50ms", "--election-timeout", "500ms", "--log-format", "json")
	procs[i] = p
	return retry("promoting "+name, 30*time.Second, func(ctx context.Context) error {
		_, err := c.PromoteMember(ctx, name)
		if err != nil && strings.Contains(err.Error(), "not a learner") {
			return nil // promoted by an earlier try whose answer was lost
		}
		return err
	})
}

func currentLeader(procs []*testcluster.Proc) *testcluster.Proc {
	for _, p := range procs {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		st, err := p.Status(ctx)
		cancel()
		if err == nil && st.GetState() == "leader" {
			return p
		}
	}
	return nil
}
