// Command lockbench drives a lock service with one workload for a fixed
// time and prints one JSON line of results. It speaks to lockd through its
// Go SDK and to etcd through etcd's concurrency package, so both are
// measured the way their users call them.
//
//	lockbench -system lockd|etcd|etcd-v3lock -endpoints host:port,… -workload W -c N -duration 10s
//
// Workloads:
//
//	uncontended  N workers, each acquiring and releasing a lock of its own
//	contended    N workers on one lock: handoffs/s, wait time, and grants in request order
//	trylock      N workers try a lock another session holds
//	sessions     N sessions kept alive for the duration; how many stay alive
//	gap          like uncontended, reporting the longest time without a successful acquire
//	failover     two processes campaign; the leader is SIGKILLed; time until the standby leads (-ttl, -rounds)
//	hold         take -c locks and hold them for the duration (lockd only: memory and restart under 1M locks)
//	caughtup     wait until the node at -endpoints has applied what the -leader had; print the index
//	floor        p50 of the cheapest server call, of an fdatasync in -dir, and of a loopback round trip;
//	             also of one fdatasync per member at once in -dir, until a quorum is done
//	leader       print the endpoint of the raft leader and exit
//	report       read result lines (a file argument) and print a table of medians and ratios
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// result is what one run prints.
type result struct {
	System      string  `json:"system"`
	Workload    string  `json:"workload"`
	Concurrency int     `json:"concurrency"`
	Seconds     float64 `json:"seconds"`
	Ops         int64   `json:"ops"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	P50us       int64   `json:"p50_us"`
	P99us       int64   `json:"p99_us"`
	P999us      int64   `json:"p999_us"`
	Errors      int64   `json:"errors"`
	// contended: grants that came out of request order.
	OutOfOrder int64 `json:"out_of_order,omitempty"`
	// sessions: sessions created and still alive at the end.
	Sessions      int `json:"sessions,omitempty"`
	SessionsAlive int `json:"sessions_alive,omitempty"`
	// gap: the longest time between two successful acquires; failover:
	// the median time without a leader after the leader's SIGKILL.
	GapMs int64 `json:"gap_ms,omitempty"`
	// floor: its parts' p50s (P50us is their sum).
	RPCus   int64 `json:"rpc_us,omitempty"`
	FsyncUs int64 `json:"fsync_us,omitempty"`
	RTTus   int64 `json:"rtt_us,omitempty"`
	// QuorumFsyncUs: as many appenders as members fdatasync at once in one
	// dir; the p50 time until a quorum of them is done.
	QuorumFsyncUs int64 `json:"quorum_fsync_us,omitempty"`
	// hold, as run.sh completes it: the largest RSS of a node under the
	// held locks, and a follower's restart until caught up.
	RSSMB     int64 `json:"rss_mb,omitempty"`
	RestartMs int64 `json:"restart_ms,omitempty"`
}

func main() {
	var (
		kind      = flag.String("system", "lockd", "lockd, etcd (concurrency.Mutex and Election) or etcd-v3lock (etcd's Lock service)")
		endpoints = flag.String("endpoints", "127.0.0.1:7070", "comma-separated host:port of the nodes")
		workload  = flag.String("workload", "uncontended", "uncontended, contended, trylock, sessions, gap or leader")
		conc      = flag.Int("c", 16, "concurrent workers (sessions, for the sessions workload)")
		duration  = flag.Duration("duration", 10*time.Second, "how long to run")
		ttl       = flag.Duration("ttl", 10*time.Second, "session TTL")
		maxOps    = flag.Int64("max-ops", 10_000_000, "stop after this many operations")
		rounds    = flag.Int("rounds", 5, "failover: SIGKILLs of the leading process")
		leaderEp  = flag.String("leader", "", "caughtup: the leader's endpoint")
		dir       = flag.String("dir", "", "floor: directory to measure fsync in, on the servers' disk (default: the temp dir)")
		cpuProf   = flag.String("cpuprofile", "", "write the load generator's own CPU profile to this file")
	)
	flag.Parse()
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			fail(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	switch *workload {
	case "report":
		reportMain(flag.Arg(0)) // lockbench -workload report results.jsonl
		return
	case "echo":
		echoMain()
		return
	case "hold":
		holdMain(strings.Split(*endpoints, ","), *conc, *ttl, *duration)
		return
	case "caughtup":
		caughtUpMain(*endpoints, *leaderEp, *duration)
		return
	case "failover":
		r := failover(*kind, *endpoints, *ttl, *rounds)
		r.System, r.Workload, r.Concurrency = *kind, "failover-ttl-"+ttl.String(), 2
		json.NewEncoder(os.Stdout).Encode(r)
		return
	}
	sys, err := newSystem(*kind, strings.Split(*endpoints, ","))
	if err != nil {
		fail(err)
	}
	defer sys.close()
	if *workload == "leader" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l, err := sys.leader(ctx)
		if err != nil {
			fail(err)
		}
		fmt.Println(l)
		return
	}
	var r result
	switch *workload {
	case "campaign":
		campaignMain(sys, *ttl, *duration)
		return
	case "floor":
		r = floor(sys, fsyncDir(*dir), len(strings.Split(*endpoints, ",")), 2000)
	default:
		r = run(sys, *workload, *conc, *duration, *ttl, *maxOps)
	}
	r.System, r.Workload, r.Concurrency = *kind, *workload, *conc
	json.NewEncoder(os.Stdout).Encode(r)
}

// sample prints the first few errors of a run to stderr, so that a count
// of errors in the results can be explained.
func sample(err error) {
	if sampled.Add(1) <= 5 {
		fmt.Fprintln(os.Stderr, "lockbench: error:", err)
	}
}

var sampled atomic.Int64

func fail(err error) {
	fmt.Fprintln(os.Stderr, "lockbench:", err)
	os.Exit(1)
}

// hist records latencies in microseconds, from 1µs to 1 minute.
type hist struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

func newHist() *hist { return &hist{h: hdrhistogram.New(1, 60_000_000, 3)} }

func (h *hist) record(d time.Duration) {
	h.mu.Lock()
	h.h.RecordValue(max(d.Microseconds(), 1))
	h.mu.Unlock()
}

func run(sys system, workload string, c int, duration, ttl time.Duration, maxOps int64) result {
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	setup, cancelSetup := context.WithTimeout(context.Background(), time.Minute)
	defer cancelSetup()
	lat := newHist()
	var ops, errs atomic.Int64
	var res result
	start := time.Now()
	done := func() bool { return ctx.Err() != nil || ops.Load() >= maxOps }
	failed := func(err error) {
		errs.Add(1)
		sample(err)
	}
	// unlock ends one operation: the lock, then its release.
	unlock := func(m mutex) {
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := m.unlock(uctx); err != nil {
			failed(err)
		}
		ops.Add(1)
	}

	sessions := make([]session, c)
	if workload != "sessions" {
		for i := range sessions {
			s, err := sys.newSession(setup, ttl)
			if err != nil {
				fail(fmt.Errorf("session: %w", err))
			}
			sessions[i] = s
		}
		defer func() {
			for _, s := range sessions {
				cctx, cc := context.WithTimeout(context.Background(), 5*time.Second)
				s.close(cctx)
				cc()
			}
		}()
		start = time.Now()
	}
	var wg sync.WaitGroup
	switch workload {
	case "uncontended", "gap":
		var lastOK atomic.Int64
		lastOK.Store(time.Now().UnixNano())
		var gap atomic.Int64
		for i := range c {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := sessions[i].mutex(fmt.Sprintf("bench/uncontended/%d", i))
				for !done() {
					t0 := time.Now()
					actx, ac := context.WithTimeout(ctx, 5*time.Second)
					err := m.lock(actx)
					ac()
					if err != nil {
						if ctx.Err() == nil { // not the end of the run
							failed(err)
						}
						continue
					}
					lat.record(time.Since(t0))
					now := time.Now().UnixNano()
					if g := now - lastOK.Swap(now); g > gap.Load() {
						gap.Store(g)
					}
					unlock(m)
				}
			}()
		}
		wg.Wait()
		if workload == "gap" {
			res.GapMs = gap.Load() / 1e6
		}
	case "contended":
		type grant struct {
			called, got time.Time
			token       uint64
		}
		var mu sync.Mutex
		var grants []grant
		for i := range c {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := sessions[i].mutex("bench/contended")
				for !done() {
					t0 := time.Now()
					err := m.lock(ctx)
					if err != nil {
						if ctx.Err() == nil {
							failed(err)
						}
						continue
					}
					got := time.Now()
					lat.record(got.Sub(t0))
					mu.Lock()
					grants = append(grants, grant{t0, got, m.token()})
					mu.Unlock()
					unlock(m)
				}
			}()
		}
		wg.Wait()
		// In request order: a request made well (1ms) before another, while
		// both waited, is granted first.
		sort.Slice(grants, func(i, j int) bool { return grants[i].got.Before(grants[j].got) })
		for i := range grants {
			for j := i + 1; j < len(grants) && j < i+2*c; j++ {
				if grants[j].called.Add(time.Millisecond).Before(grants[i].called) && grants[j].called.After(grants[max(i-1, 0)].got) {
					res.OutOfOrder++
				}
			}
		}
	case "trylock":
		holder, err := sys.newSession(setup, ttl)
		if err != nil {
			fail(err)
		}
		defer holder.close(context.Background())
		hm := holder.mutex("bench/trylock")
		if err := hm.lock(setup); err != nil {
			fail(err)
		}
		for i := range c {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := sessions[i].mutex("bench/trylock")
				for !done() {
					t0 := time.Now()
					got, err := m.tryLock(ctx)
					switch {
					case err != nil && ctx.Err() != nil:
						continue // the end of the run, not an error
					case err != nil:
						failed(err)
						continue
					case got:
						failed(errors.New("a try-lock got a lock that is held"))
						continue
					}
					lat.record(time.Since(t0))
					ops.Add(1)
				}
			}()
		}
		wg.Wait()
	case "sessions":
		// Create c sessions with 64 at a time, then keep them for the duration.
		all := make([]session, c)
		sem := make(chan struct{}, 64)
		for i := range c {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				t0 := time.Now()
				s, err := sys.newSession(setup, ttl)
				if err != nil {
					errs.Add(1)
					return
				}
				lat.record(time.Since(t0))
				all[i] = s
				ops.Add(1)
			}()
		}
		wg.Wait()
		created := time.Now()
		<-ctx.Done()
		res.Sessions = int(ops.Load())
		for _, s := range all {
			if s == nil {
				continue
			}
			select {
			case <-s.lost():
			default:
				res.SessionsAlive++
			}
		}
		start = created
		var cwg sync.WaitGroup
		for _, s := range all {
			if s == nil {
				continue
			}
			cwg.Add(1)
			sem <- struct{}{}
			go func() {
				defer cwg.Done()
				defer func() { <-sem }()
				cctx, cc := context.WithTimeout(context.Background(), 10*time.Second)
				s.close(cctx)
				cc()
			}()
		}
		cwg.Wait()
	default:
		fail(fmt.Errorf("unknown workload %q", workload))
	}
	elapsed := time.Since(start)
	res.Seconds = elapsed.Seconds()
	res.Ops = ops.Load()
	res.Errors = errs.Load()
	if workload != "sessions" {
		res.OpsPerSec = float64(res.Ops) / elapsed.Seconds()
	}
	res.P50us = lat.h.ValueAtQuantile(50)
	res.P99us = lat.h.ValueAtQuantile(99)
	res.P999us = lat.h.ValueAtQuantile(99.9)
	return res
}
