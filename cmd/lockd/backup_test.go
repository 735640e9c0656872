package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/durationpb"
)

// A backup of a live cluster, restored into a new cluster of other members,
// brings back every lease, lock, waiter and token, and the revision goes on
// from where it was.
func TestSnapshotSaveRestore(t *testing.T) {
	ins := startInstances(t, 3)
	leader := waitLeader(t, ins)
	c := newClients(leader.url())
	a := grant(t, c, time.Minute, "a")
	b := grant(t, c, time.Minute, "b")
	held, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "jobs/x", LeaseId: a, LockDelay: durationpb.New(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "jobs/x", LeaseId: b, Wait: durationpb.New(0)}); err != nil {
		t.Fatal(err)
	}
	go acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "jobs/x", LeaseId: b}) // queues
	for _, n := range []string{"s/1", "s/2"} {
		if _, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: n, LeaseId: b, Capacity: 3, Mode: lockdv1.Mode_MODE_SHARED}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, "b queued", func() error {
		if d := describe(t, c, "jobs/x"); len(d.GetWaiters()) != 1 {
			return fmt.Errorf("waiters %v", d.GetWaiters())
		}
		return nil
	})
	before := map[string]*lockdv1.DescribeResponse{}
	for _, n := range []string{"jobs/x", "s/1", "s/2"} {
		before[n] = describe(t, c, n)
	}
	leases, err := c.lease.List(context.Background(), connect.NewRequest(&lockdv1.ListLeasesRequest{}))
	if err != nil {
		t.Fatal(err)
	}

	// A lease kept alive until the backup, and abandoned after; and an old
	// cluster whose raft term has gone up with leader changes.
	doomed := grant(t, c, testElection, "doomed")
	stopDoomed := keepAlive(t, c, doomed, 100*time.Millisecond)
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := waitLeader(t, ins).node.TransferLeadership(ctx); err != nil {
			t.Log("transfer:", err)
		}
		cancel()
	}
	waitLeader(t, ins)

	dir := t.TempDir()
	file := filepath.Join(dir, "backup.snap")
	var out, errOut bytes.Buffer
	if code := run([]string{"snapshot", "save", file, "--endpoints", strings.TrimPrefix(ins[0].url(), "http://")}, &out, &errOut); code != 0 {
		t.Fatalf("snapshot save: exit %d: %s", code, errOut.String())
	}
	t.Log(strings.TrimSpace(out.String()))
	stopDoomed()

	// A damaged file is refused.
	data, _ := os.ReadFile(file)
	damaged := filepath.Join(dir, "damaged.snap")
	data[len(data)-1] ^= 1
	os.WriteFile(damaged, data, 0o600)
	errOut.Reset()
	if code := run([]string{"snapshot", "restore", damaged, "--name", "r1", "--data-dir", filepath.Join(dir, "bad")}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "damaged") {
		t.Fatalf("restore of a damaged file: exit %d: %s", code, errOut.String())
	}

	// Restore into a new cluster of three other members.
	addrs := freeAddrs(t, 3)
	cluster, peers := initialCluster(t, "r", addrs)
	var restored []*instance
	for i, a := range addrs {
		dataDir := filepath.Join(dir, fmt.Sprintf("r%d", i+1))
		errOut.Reset()
		if code := run([]string{"snapshot", "restore", file, "--name", fmt.Sprintf("r%d", i+1), "--data-dir", dataDir, "--initial-cluster", cluster}, &out, &errOut); code != 0 {
			t.Fatalf("snapshot restore: exit %d: %s", code, errOut.String())
		}
		in, err := start(serveConfig{name: fmt.Sprintf("r%d", i+1), dataDir: dataDir, listen: a, initialCluster: cluster,
			heartbeat: 30 * time.Millisecond, electionTimeout: testElection, snapshotEntries: 10000}, peers, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(in.close)
		restored = append(restored, in)
	}
	// Restoring over a seeded data dir is refused.
	errOut.Reset()
	if code := run([]string{"snapshot", "restore", file, "--name", "r1", "--data-dir", filepath.Join(dir, "r1"), "--initial-cluster", cluster}, &out, &errOut); code == 0 {
		t.Fatal("restore into a data dir in use succeeded")
	}
	rl := waitLeader(t, restored)
	rc := newClients(rl.url())
	for n, want := range before {
		got := describe(t, rc, n)
		if fmt.Sprint(got.GetHolders()) != fmt.Sprint(want.GetHolders()) || fmt.Sprint(got.GetWaiters()) != fmt.Sprint(want.GetWaiters()) {
			t.Errorf("%s after restore:\n%v\nwant\n%v", n, got, want)
		}
	}
	rleases, err := rc.lease.List(context.Background(), connect.NewRequest(&lockdv1.ListLeasesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	// (The abandoned lease may be gone already; it is checked below.)
	got := map[uint64]string{}
	for _, l := range rleases.Msg.GetLeases() {
		if l.GetId() != doomed {
			got[l.GetId()] = fmt.Sprint(l.GetOwner(), l.GetHeld(), l.GetWaiting())
		}
	}
	want := map[uint64]string{}
	for _, l := range leases.Msg.GetLeases() {
		want[l.GetId()] = fmt.Sprint(l.GetOwner(), l.GetHeld(), l.GetWaiting())
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("leases after restore:\n%v\nwant\n%v", got, want)
	}
	fence, err := rc.lock.CheckFence(context.Background(), connect.NewRequest(&lockdv1.CheckFenceRequest{Name: "jobs/x", Token: held.GetToken()}))
	if err != nil || !fence.Msg.GetValid() {
		t.Fatalf("the restored holder's token is not valid: %v %v", fence, err)
	}
	// Tokens go on from the backup's revision: a new grant's token is
	// higher than every token before.
	r, err := acquire(context.Background(), rc, &lockdv1.AcquireRequest{Name: "jobs/new", LeaseId: a})
	if err != nil {
		t.Fatal(err)
	}
	if r.GetToken() <= before["s/2"].GetRevision() {
		t.Fatalf("new token %d is not above the backup's revision %d", r.GetToken(), before["s/2"].GetRevision())
	}
	// A restored lease that nobody keeps alive expires in the new cluster,
	// though the old cluster's raft term was higher than the new one's.
	eventually(t, 10*time.Second, "the restored, abandoned lease to expire", func() error {
		_, err := rc.lease.Get(context.Background(), connect.NewRequest(&lockdv1.GetLeaseRequest{LeaseId: doomed}))
		if codeOf(err) != connect.CodeNotFound {
			return fmt.Errorf("lease %d: %v", doomed, err)
		}
		return nil
	})
}
