package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startOne starts a one-node cluster process and returns it and its address.
func startOne(t *testing.T) (*proc, string) {
	t.Helper()
	addr := freeAddrs(t, 1)[0]
	dir := t.TempDir()
	p := startProc(t, "node", dir, addr, "serve", "--listen", addr, "--data-dir", filepath.Join(dir, "data"),
		"--heartbeat-interval", "50ms", "--election-timeout", "500ms", "--log-format", "json")
	leaderOf(t, []*proc{p}, 15*time.Second)
	return p, addr
}

// cli runs a lockd client command and returns its exit code and output.
func cli(t *testing.T, addr string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(lockdBin, args...)
	cmd.Env = append(os.Environ(), "LOCKD_ENDPOINTS="+addr)
	out, _ := cmd.CombinedOutput()
	return cmd.ProcessState.ExitCode(), string(out)
}

// Two `lockd lock` runs started together run one after the other, each
// with its own fencing token in LOCKD_FENCING_TOKEN.
func TestCLILockSerializes(t *testing.T) {
	_, addr := startOne(t)
	logFile := filepath.Join(t.TempDir(), "runs")
	script := fmt.Sprintf(`echo "start $LOCKD_FENCING_TOKEN $(date +%%s%%N)" >> %[1]s; sleep 0.3; echo "end $LOCKD_FENCING_TOKEN $(date +%%s%%N)" >> %[1]s`, logFile)
	done := make(chan int, 3)
	for range 3 {
		go func() {
			code, out := cli(t, addr, "lock", "jobs/serial", "--", "sh", "-c", script)
			if code != 0 {
				t.Errorf("lockd lock exited %d: %s", code, out)
			}
			done <- code
		}()
	}
	for range 3 {
		<-done
	}
	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	type run struct {
		token      uint64
		start, end int64
	}
	runs := map[uint64]*run{}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		tok, err1 := strconv.ParseUint(f[1], 10, 64)
		at, err2 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil || tok == 0 {
			t.Fatalf("bad line %q: the child did not see a token", sc.Text())
		}
		if runs[tok] == nil {
			runs[tok] = &run{token: tok}
		}
		if f[0] == "start" {
			runs[tok].start = at
		} else {
			runs[tok].end = at
		}
	}
	var list []*run
	for _, r := range runs {
		list = append(list, r)
	}
	if len(list) != 3 {
		t.Fatalf("%d distinct tokens, want 3:\n%s", len(list), data)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].start < list[j].start })
	for i := 1; i < len(list); i++ {
		if list[i].start < list[i-1].end {
			t.Fatalf("runs overlap:\n%s", data)
		}
		if list[i].token <= list[i-1].token {
			t.Fatalf("token %d ran after token %d", list[i].token, list[i-1].token)
		}
	}
}

func TestCLIExitCodesAndFlags(t *testing.T) {
	_, addr := startOne(t)
	if code, out := cli(t, addr, "lock", "x", "--", "sh", "-c", "exit 7"); code != 7 {
		t.Fatalf("exit code %d, want the command's 7: %s", code, out)
	}
	// Flags before and after the name.
	if code, out := cli(t, addr, "lock", "--ttl", "5s", "x", "--output", "json", "--", "true"); code != 0 {
		t.Fatalf("flags around the name: %d %s", code, out)
	}
	holder := exec.Command(lockdBin, "lock", "held", "--", "sleep", "30")
	holder.Env = append(os.Environ(), "LOCKD_ENDPOINTS="+addr)
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Signal(syscall.SIGTERM); holder.Wait() })
	eventually(t, 10*time.Second, "held", func() error {
		if _, out := cli(t, addr, "locks", "describe", "held", "--output", "json"); !strings.Contains(out, `"holders"`) {
			return fmt.Errorf("not held: %s", out)
		}
		return nil
	})
	if code, out := cli(t, addr, "lock", "held", "--skip-if-held", "--", "true"); code != exitNotAcquired {
		t.Fatalf("--skip-if-held on a held lock: exit %d, want %d: %s", code, exitNotAcquired, out)
	}
	if code, out := cli(t, addr, "lock", "held", "--wait", "300ms", "--", "true"); code != exitNotAcquired {
		t.Fatalf("--wait that runs out: exit %d, want %d: %s", code, exitNotAcquired, out)
	}
	if code, _ := cli(t, addr, "lock", "held"); code != exitUsage {
		t.Fatalf("no command: exit %d, want %d", code, exitUsage)
	}
	code, out := cli(t, addr, "lease", "list", "--output", "json")
	if code != 0 || !strings.Contains(out, "lockd lock on") {
		t.Fatalf("lease list: %d %s", code, out)
	}
	code, out = cli(t, addr, "status", "--output", "json")
	var st map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st["state"] != "leader" {
		t.Fatalf("status: %d %s", code, out)
	}
	// SIGTERM to `lockd lock` stops the command and releases the lock.
	holder.Process.Signal(syscall.SIGTERM)
	holder.Wait()
	if code, out := cli(t, addr, "lock", "held", "--skip-if-held", "--", "true"); code != 0 {
		t.Fatalf("the lock was not released after SIGTERM: %d %s", code, out)
	}
}

// When the lease cannot be renewed (the server is unreachable), the command
// is killed before the lease's TTL runs out, so it is dead before the server
// could give the lock to anybody else.
func TestCLIKillsCommandWhenLeaseLost(t *testing.T) {
	srv, addr := startOne(t)
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	const ttl = 2 * time.Second
	lock := exec.Command(lockdBin, "lock", "--ttl", ttl.String(), "doomed", "--", "sh", "-c", "echo $$ > "+pidFile+"; exec sleep 60")
	lock.Env = append(os.Environ(), "LOCKD_ENDPOINTS="+addr)
	if err := lock.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Process.Kill(); lock.Wait() })
	var pid int
	eventually(t, 10*time.Second, "the command started", func() error {
		b, err := os.ReadFile(pidFile)
		if err == nil {
			pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		return err
	})
	// Let a keep-alive or two go through, then make the server unreachable.
	time.Sleep(ttl / 2)
	srv.Signal(syscall.SIGSTOP)
	stopped := time.Now()
	t.Cleanup(func() { srv.Signal(syscall.SIGCONT) })
	for syscall.Kill(pid, 0) == nil {
		if time.Since(stopped) > ttl {
			t.Fatalf("the command still runs %v after the server became unreachable (TTL %v)", time.Since(stopped), ttl)
		}
		time.Sleep(10 * time.Millisecond)
	}
	died := time.Since(stopped)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { lock.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("lockd lock did not exit after its command was killed")
	}
	if code := lock.ProcessState.ExitCode(); code == 0 {
		t.Fatalf("lockd lock exited 0 after losing its lease")
	}
	t.Logf("command killed %v after the server became unreachable (TTL %v)", died, ttl)
}

func TestCLIElect(t *testing.T) {
	_, addr := startOne(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	obs := exec.CommandContext(ctx, lockdBin, "elect", "primary", "--observe", "--output", "json")
	obs.Env = append(os.Environ(), "LOCKD_ENDPOINTS="+addr)
	out, err := obs.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := obs.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); obs.Wait() })
	lines := bufio.NewScanner(out)
	next := func() map[string]any {
		t.Helper()
		if !lines.Scan() {
			t.Fatal("observe ended")
		}
		var v map[string]any
		if err := json.Unmarshal(lines.Bytes(), &v); err != nil {
			t.Fatalf("observe printed %q", lines.Text())
		}
		return v
	}
	if v := next(); v["leader"] != nil {
		t.Fatalf("first observation %v, want no leader", v)
	}
	code, res := cli(t, addr, "elect", "primary", "--value", "host-a", "--", "sh", "-c", `test -n "$LOCKD_ELECTION_TERM" && echo "term $LOCKD_ELECTION_TERM"`)
	if code != 0 || !strings.Contains(res, "term ") {
		t.Fatalf("elect: %d %s", code, res)
	}
	if v := next(); v["leader"] == nil || v["leader"].(map[string]any)["value"] != "host-a" {
		t.Fatalf("observed %v, want host-a leading", v)
	}
	if v := next(); v["leader"] != nil {
		t.Fatalf("observed %v after the command ended, want no leader (resigned)", v)
	}
}
