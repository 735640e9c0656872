package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The README's first command: `lockd serve` with no flags runs a one-member
// cluster on 127.0.0.1:7070 with its data in ./lockd-data, and Status over
// Connect's JSON shows it as leader.
func TestServeWithNoFlags(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:7070")
	if err != nil {
		t.Fatalf("the default port 127.0.0.1:7070 is taken (%v); stop whatever holds it and run again", err)
	}
	ln.Close()
	dir := t.TempDir()
	p := startProc(t, "default", dir, "127.0.0.1:7070", "serve")
	var st struct {
		Name, State, Leader string
		Members             []struct{ Name, URL string }
	}
	eventually(t, 15*time.Second, "a leader over Connect JSON", func() error {
		resp, err := http.Post("http://127.0.0.1:7070/lockd.v1.ClusterService/Status", "application/json", strings.NewReader("{}"))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, body)
		}
		if err := json.Unmarshal(body, &st); err != nil {
			return err
		}
		if st.State != "leader" {
			return fmt.Errorf("state %q", st.State)
		}
		return nil
	})
	if st.Name != "default" || st.Leader != "default" || len(st.Members) != 1 {
		t.Fatalf("status %+v, want the default node leading a one-member cluster", st)
	}
	p.Signal(syscall.SIGTERM)
	code, ok := p.Wait(15 * time.Second)
	if !ok || code != 0 {
		t.Fatalf("SIGTERM: exited=%v code=%d, want a clean exit 0", ok, code)
	}
	// The data dir is ./lockd-data, and a restart recovers from it.
	p2 := startProc(t, "default-again", dir, "127.0.0.1:7070", "serve")
	eventually(t, 15*time.Second, "leader after restart", func() error {
		st, err := p2.Status(context.Background())
		if err != nil {
			return err
		}
		if st.State != "leader" || st.AppliedIndex < 2 {
			return fmt.Errorf("state %s applied %d", st.State, st.AppliedIndex)
		}
		return nil
	})
}

// Three processes elect a leader; SIGKILL of the leader gets a new one; the
// killed node restarts from its data dir and catches up.
func TestClusterSurvivesLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test; runs without -short")
	}
	procs := startCluster(t, 3, "--heartbeat-interval", "50ms", "--election-timeout", "500ms")
	leader := leaderOf(t, procs, 20*time.Second)
	before, err := leader.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	leader.Signal(syscall.SIGKILL)
	if _, ok := leader.Wait(10 * time.Second); !ok {
		t.Fatal("SIGKILL did not end the leader")
	}
	var rest []*proc
	for _, p := range procs {
		if p != leader {
			rest = append(rest, p)
		}
	}
	newLeader := leaderOf(t, rest, 20*time.Second)
	if newLeader == leader {
		t.Fatal("the killed node is still leader")
	}
	st, err := newLeader.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Term <= before.Term {
		t.Fatalf("new leader's term %d is not past the old one's %d", st.Term, before.Term)
	}

	leader.Restart()
	eventually(t, 20*time.Second, "the restarted node catching up", func() error {
		ls, err := newLeader.Status(context.Background())
		if err != nil {
			return err
		}
		rs, err := leader.Status(context.Background())
		if err != nil {
			return err
		}
		if rs.AppliedIndex < ls.AppliedIndex || rs.Leader != ls.Name {
			return fmt.Errorf("restarted node applied %d (leader %q), leader %s applied %d", rs.AppliedIndex, rs.Leader, ls.Name, ls.AppliedIndex)
		}
		return nil
	})
}

// SIGTERM on the leader hands leadership over and exits 0.
func TestSIGTERMHandsOverLeadership(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster test; runs without -short")
	}
	procs := startCluster(t, 3, "--heartbeat-interval", "50ms", "--election-timeout", "5s")
	leader := leaderOf(t, procs, 30*time.Second)
	start := time.Now()
	leader.Signal(syscall.SIGTERM)
	var rest []*proc
	for _, p := range procs {
		if p != leader {
			rest = append(rest, p)
		}
	}
	leaderOf(t, rest, 10*time.Second)
	// Without a handover the others would wait out a 5s election timeout.
	if took := time.Since(start); took > 4500*time.Millisecond {
		t.Errorf("a new leader took %v after SIGTERM: no handover?", took)
	}
	code, ok := leader.Wait(15 * time.Second)
	if !ok || code != 0 {
		t.Fatalf("SIGTERM: exited=%v code=%d, want 0", ok, code)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("draining took %v", took)
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"900MiB": 900 << 20, "2GiB": 2 << 30, "1.5GB": 1_500_000_000, "1048576": 1 << 20, "64KiB": 64 << 10, "10B": 10} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "MiB", "-1GiB", "lots"} {
		if _, err := parseBytes(bad); err == nil {
			t.Errorf("parseBytes(%q) took a bad size", bad)
		}
	}
}
