package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
	"github.com/lockd-io/lockd/node"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"github.com/rs/zerolog"
)

// memberCluster is an in-process cluster whose membership a test changes.
type memberCluster struct {
	t    *testing.T
	base string
	ins  map[string]*instance
}

// newMemberCluster starts a cluster of size members, n1…, and returns it
// with their addresses.
func newMemberCluster(t *testing.T, size int) (*memberCluster, []string) {
	mc := &memberCluster{t: t, base: t.TempDir(), ins: map[string]*instance{}}
	addrs := freeAddrs(t, size)
	initial, peers := initialCluster(t, "n", addrs)
	for i, a := range addrs {
		c := mc.config(fmt.Sprintf("n%d", i+1), a)
		c.initialCluster = initial
		mc.start(c, peers)
	}
	return mc, addrs
}

func (mc *memberCluster) config(name, addr string) serveConfig {
	return serveConfig{name: name, dataDir: filepath.Join(mc.base, name), listen: addr, advertise: "http://" + addr,
		heartbeat: 30 * time.Millisecond, electionTimeout: testElection, snapshotEntries: 200, compactionMargin: 50}
}

func (mc *memberCluster) start(c serveConfig, peers []node.Peer) *instance {
	mc.t.Helper()
	in, err := start(c, peers, zerolog.Nop())
	if err != nil {
		mc.t.Fatalf("starting %s: %v", c.name, err)
	}
	mc.t.Cleanup(in.close)
	mc.ins[c.name] = in
	return in
}

func (mc *memberCluster) live() []*instance {
	var out []*instance
	for _, in := range mc.ins {
		select {
		case <-in.removed:
		default:
			out = append(out, in)
		}
	}
	return out
}

// cli runs a lockd client command against the cluster.
func (mc *memberCluster) cli(args ...string) (string, error) {
	var eps []string
	for _, in := range mc.live() {
		eps = append(eps, strings.TrimPrefix(in.url(), "http://"))
	}
	var out, errOut bytes.Buffer
	if code := run(append(args, "--endpoints", strings.Join(eps, ",")), &out, &errOut); code != 0 {
		return out.String(), fmt.Errorf("lockd %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
	}
	return out.String(), nil
}

// join adds a member as a learner, starts it with --join, and promotes it
// once it has caught up.
func (mc *memberCluster) join(name string) *instance {
	mc.t.Helper()
	addr := freeAddrs(mc.t, 1)[0]
	if _, err := mc.cli("member", "add", name, "--peer-url", "http://"+addr, "--learner"); err != nil {
		mc.t.Fatal(err)
	}
	c := mc.config(name, addr)
	c.join = mc.live()[0].url()
	in := mc.start(c, nil)
	eventually(mc.t, 20*time.Second, name+" promoted", func() error {
		_, err := mc.cli("member", "promote", name)
		return err
	})
	return in
}

func (mc *memberCluster) voters() int {
	mc.t.Helper()
	out, err := mc.cli("member", "list")
	if err != nil {
		mc.t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[3] == "voter" {
			n++
		}
	}
	return n
}

// A 3-member cluster grows to 5 and shrinks back to 3 while a client locks
// and unlocks without pause: no acquire fails, tokens only go up, and the
// removed members stop. Then a member whose data dir is wiped rejoins under
// a new name and catches up by snapshot.
func TestMembershipGrowShrink(t *testing.T) {
	mc, addrs := newMemberCluster(t, 3)
	waitLeader(t, mc.live())

	// The load: one session locking and unlocking a mutex, checking that
	// tokens only go up, on endpoints of every member there will be.
	client, err := lockd.New(addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var loadErr error
	var cycles int
	wg.Add(1)
	go func() {
		defer wg.Done()
		s, err := client.NewSession(ctx, lockd.WithTTL(5*time.Second))
		if err != nil {
			loadErr = err
			return
		}
		defer s.Close(context.Background())
		m := lockd.NewMutex(s, "members/load")
		var last uint64
		for ctx.Err() == nil {
			octx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			err := m.Lock(octx)
			if err == nil {
				if tok := m.Token(); tok <= last {
					err = fmt.Errorf("token %d after %d", tok, last)
				} else {
					last = tok
					err = m.Unlock(octx)
				}
			}
			cancel()
			if err != nil {
				loadErr = err
				return
			}
			cycles++
		}
	}()

	n4, n5 := mc.join("n4"), mc.join("n5")
	if v := mc.voters(); v != 5 {
		t.Fatalf("%d voters after growing, want 5", v)
	}
	// Leadership moves to a new member on request, and the load goes on.
	if out, err := mc.cli("member", "transfer", "n5"); err != nil || !strings.Contains(out, "leader: n5") {
		t.Fatalf("transfer to n5: %q %v", out, err)
	}
	if leader, _, _ := n5.node.Leadership(); !leader {
		t.Fatal("n5 does not lead after the transfer")
	}
	if _, err := mc.cli("member", "transfer", "nobody"); err == nil {
		t.Fatal("a transfer to a non-member succeeded")
	}
	for _, name := range []string{"n4", "n5"} {
		if _, err := mc.cli("member", "remove", name); err != nil {
			t.Fatal(err)
		}
	}
	for _, in := range []*instance{n4, n5} {
		select {
		case <-in.removed:
		case <-time.After(20 * time.Second):
			st, err := in.node.Status(context.Background())
			t.Fatalf("a removed member does not know it was removed: %+v %v", st, err)
		}
	}
	if v := mc.voters(); v != 3 {
		t.Fatalf("%d voters after shrinking, want 3", v)
	}
	// A removed member does not come back with its old data dir.
	n4.close()
	delete(mc.ins, "n4")
	if in, err := start(mc.config("n4", n4.ln.Addr().String()), nil, zerolog.Nop()); err == nil {
		in.close()
		t.Fatal("a removed member restarted with its data dir")
	} else if !strings.Contains(err.Error(), "removed") {
		t.Fatalf("restarting a removed member: %v, want a refusal that says it was removed", err)
	}

	// n3's disk is lost: remove it, wipe it, and add a fresh member in its
	// place, which must catch up from a snapshot once the log was compacted.
	eventually(t, 30*time.Second, "the log compacted", func() error {
		st, err := waitLeader(t, mc.live()).node.Status(context.Background())
		if err != nil || st.FirstIndex <= 1 {
			return fmt.Errorf("first index %d (%v)", st.FirstIndex, err)
		}
		return nil
	})
	if _, err := mc.cli("member", "remove", "n3"); err != nil {
		t.Fatal(err)
	}
	old := mc.ins["n3"]
	old.close()
	delete(mc.ins, "n3")
	if err := os.RemoveAll(filepath.Join(mc.base, "n3")); err != nil {
		t.Fatal(err)
	}
	fresh := mc.join("n3b")
	eventually(t, 20*time.Second, "n3b caught up", func() error {
		leader := waitLeader(t, mc.live())
		lst, _ := leader.node.Status(context.Background())
		st, err := fresh.node.Status(context.Background())
		if err != nil {
			return err
		}
		if st.Applied+10 < lst.Applied {
			return fmt.Errorf("n3b applied %d of %d", st.Applied, lst.Applied)
		}
		return nil
	})
	if st, _ := fresh.node.Status(context.Background()); st.SnapshotIndex == 0 {
		t.Fatalf("n3b caught up without a snapshot: %+v", st)
	}
	if v := mc.voters(); v != 3 {
		t.Fatalf("%d voters after the rejoin, want 3", v)
	}

	stop()
	wg.Wait()
	if loadErr != nil {
		t.Fatalf("the load failed after %d cycles: %v", cycles, loadErr)
	}
	if cycles == 0 {
		t.Fatal("the load made no progress")
	}
	t.Logf("%d lock cycles across the membership changes", cycles)
}

// A learner removed before it was promoted stops by itself, although it
// never campaigns and so never forgets the leader that stopped talking to
// it; and a new member added once the log was compacted catches up at
// once, with no more writes to prompt a snapshot that names it.
func TestLearnerCatchesUpAndStopsWhenRemoved(t *testing.T) {
	mc, _ := newMemberCluster(t, 3)
	leader := waitLeader(t, mc.live())
	c := newClients(leader.url())
	lease := grant(t, c, 5*time.Second, "writer")
	for i := range 500 { // past a snapshot (every 200 entries) and its compaction
		if _, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: fmt.Sprintf("w/%d", i), LeaseId: lease}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "the log compacted", func() error {
		st, err := leader.node.Status(context.Background())
		if err != nil || st.FirstIndex <= 1 {
			return fmt.Errorf("first index %d (%v)", st.FirstIndex, err)
		}
		return nil
	})
	addr := freeAddrs(t, 1)[0]
	if _, err := mc.cli("member", "add", "n4", "--peer-url", "http://"+addr, "--learner"); err != nil {
		t.Fatal(err)
	}
	cfg := mc.config("n4", addr)
	cfg.join = leader.url()
	n4 := mc.start(cfg, nil)
	eventually(t, 10*time.Second, "n4 caught up", func() error {
		lst, _ := leader.node.Status(context.Background())
		st, err := n4.node.Status(context.Background())
		if err != nil || st.Applied < lst.Applied {
			return fmt.Errorf("n4 applied %d of %d (%v)", st.Applied, lst.Applied, err)
		}
		return nil
	})
	if _, err := mc.cli("member", "remove", "n4"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n4.removed:
	case <-time.After(20 * testElection):
		st, err := n4.node.Status(context.Background())
		t.Fatalf("the removed learner still runs: %+v %v", st, err)
	}
}
