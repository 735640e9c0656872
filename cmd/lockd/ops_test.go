package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/lockd-io/lockd/node"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/durationpb"
)

// scrape fetches /metrics and returns each sample's value by its name and
// labels as the text format writes them, e.g.
// `lockd_lock_grants_total{namespace="jobs"}`.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad metrics line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// The metrics an operator watches are served at /metrics, and they move
// with what the cluster does: grants, releases, expiries, lock-delays,
// leases, RPCs by code, raft indexes and fsyncs.
func TestMetricsMove(t *testing.T) {
	ins := startInstances(t, 3)
	leader := waitLeader(t, ins)
	url := leader.url()
	before := scrape(t, url)
	for _, name := range []string{"lockd_raft_term", "lockd_raft_applied_index", "lockd_raft_commit_index", "lockd_raft_is_leader",
		"lockd_leases", "lockd_locks_held", "lockd_lock_waiters", "lockd_store_disk_bytes", "go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := before[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if before["lockd_raft_is_leader"] != 1 || before["lockd_raft_term"] < 1 {
		t.Errorf("the leader reports is_leader=%v term=%v", before["lockd_raft_is_leader"], before["lockd_raft_term"])
	}

	c := newClients(url)
	kept := grant(t, c, 5*time.Second, "kept")
	stop := keepAlive(t, c, kept, 200*time.Millisecond)
	defer stop()
	doomed := grant(t, c, testElection, "doomed")
	held, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "jobs/a", LeaseId: kept})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.lock.Release(context.Background(), connect.NewRequest(&lockdv1.ReleaseRequest{Name: "jobs/a", LeaseId: kept, Token: held.GetToken()})); err != nil {
		t.Fatal(err)
	}
	// A lease that expires holding a lock with a delay.
	if _, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "jobs/b", LeaseId: doomed, LockDelay: durationpb.New(100 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	if _, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "", LeaseId: kept}); codeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("a bad acquire: %v", err)
	}
	if _, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "web/c", LeaseId: kept}); err != nil {
		t.Fatal(err)
	}

	var after map[string]float64
	eventually(t, 10*time.Second, "the metrics to move", func() error {
		after = scrape(t, url)
		for sample, want := range map[string]float64{
			`lockd_lock_grants_total{namespace="jobs"}`:                                                           2,
			`lockd_lock_releases_total{namespace="jobs",reason="released"}`:                                       1,
			`lockd_lock_releases_total{namespace="jobs",reason="expired"}`:                                        1,
			`lockd_lock_delays_total{namespace="jobs"}`:                                                           1,
			`lockd_lease_events_total{event="granted"}`:                                                           2,
			`lockd_lease_events_total{event="expired"}`:                                                           1,
			`lockd_namespace_locks_held{namespace="web"}`:                                                         0, // present; the walk is cached for 5s
			`lockd_rpc_duration_seconds_count{code="ok",procedure="/lockd.v1.LockService/Acquire"}`:               3,
			`lockd_rpc_duration_seconds_count{code="invalid_argument",procedure="/lockd.v1.LockService/Acquire"}`: 1,
		} {
			if got, ok := after[sample]; !ok || got < want {
				return fmt.Errorf("%s = %v (present %v), want at least %v", sample, got, ok, want)
			}
		}
		return nil
	})
	for _, name := range []string{"lockd_raft_applied_index", "lockd_raft_commit_index", "lockd_store_fsync_duration_seconds_count", "lockd_raft_proposal_duration_seconds_count"} {
		if after[name] <= before[name] {
			t.Errorf("%s did not move: %v then %v", name, before[name], after[name])
		}
	}
	if after["lockd_locks_held"] != 1 || after["lockd_leases"] != 1 {
		t.Errorf("held %v locks and %v leases, want 1 and 1", after["lockd_locks_held"], after["lockd_leases"])
	}
	// A follower counts the same table events: every node applies the log.
	for _, in := range ins {
		if in != leader {
			eventually(t, 5*time.Second, "a follower's grant count", func() error {
				if got := scrape(t, in.url())[`lockd_lock_grants_total{namespace="jobs"}`]; got < 2 {
					return fmt.Errorf("follower counted %v grants", got)
				}
				return nil
			})
		}
	}
}

// isolation cuts every link to and from one member.
type isolation struct{ id atomic.Uint64 }

func (f *isolation) Outbound(from, to uint64) (bool, time.Duration) {
	id := f.id.Load()
	return id != 0 && (from == id || to == id), 0
}

// /healthz answers while the process serves; /readyz only while the node
// can serve clients: a node cut off from its cluster is not ready.
func TestHealthAndReadiness(t *testing.T) {
	cut := new(isolation)
	ins := startInstancesWith(t, 3, func(int) node.Faults { return cut })
	leader := waitLeader(t, ins)
	get := func(url, path string) int {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, in := range ins {
		eventually(t, 5*time.Second, "every node ready", func() error {
			if code := get(in.url(), "/readyz"); code != http.StatusOK {
				return fmt.Errorf("%s: /readyz %d", in.url(), code)
			}
			return nil
		})
	}
	cut.id.Store(leader.node.ID())
	eventually(t, 10*time.Second, "the cut-off leader to be unready", func() error {
		if code := get(leader.url(), "/readyz"); code != http.StatusServiceUnavailable {
			return fmt.Errorf("/readyz %d", code)
		}
		return nil
	})
	if code := get(leader.url(), "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz %d on a live process", code)
	}
}

// The audit log has a line per grant, release and lease end, in order.
func TestAuditLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	addrs := freeAddrs(t, 1)
	c := serveConfig{name: "a", dataDir: t.TempDir(), listen: addrs[0], heartbeat: 30 * time.Millisecond,
		electionTimeout: testElection, snapshotEntries: 10000, auditLog: path}
	peers, _ := node.ParseInitialCluster("a=http://" + addrs[0])
	in, err := start(c, peers, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.close)
	waitLeader(t, []*instance{in})
	cl := newClients(in.url())
	id := grant(t, cl, 5*time.Second, "audited")
	r, err := acquire(context.Background(), cl, &lockdv1.AcquireRequest{Name: "jobs/audited", LeaseId: id})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.lock.Release(context.Background(), connect.NewRequest(&lockdv1.ReleaseRequest{Name: "jobs/audited", LeaseId: id, Token: r.GetToken()})); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.lease.Revoke(context.Background(), connect.NewRequest(&lockdv1.RevokeRequest{LeaseId: id})); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the audit lines", func() error {
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var events []string
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			for _, ev := range []string{`"event":"grant"`, `"event":"release"`, `"event":"lease-end"`} {
				if strings.Contains(line, ev) && strings.Contains(line, fmt.Sprintf(`"lease":%d`, id)) {
					events = append(events, ev)
				}
			}
		}
		if want := []string{`"event":"grant"`, `"event":"release"`, `"event":"lease-end"`}; fmt.Sprint(events) != fmt.Sprint(want) {
			return fmt.Errorf("audit events %v, want %v", events, want)
		}
		return nil
	})
}
