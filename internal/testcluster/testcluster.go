// Package testcluster runs lockd processes for tests: it builds the binary
// once, starts single nodes and static clusters on loopback ports, and lets a
// test kill, pause, restart and query them. Only tests import it.
package testcluster

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"github.com/lockd-io/lockd/proto/lockd/v1/lockdv1connect"
)

// Build builds the lockd binary into dir, with the given build tags, and
// returns its path.
func Build(dir string, tags ...string) (string, error) {
	bin := filepath.Join(dir, "lockd")
	if len(tags) > 0 {
		bin += "-" + strings.Join(tags, "-")
	}
	cmd := exec.Command("go", "build", "-tags", strings.Join(tags, ","), "-o", bin, "github.com/lockd-io/lockd/cmd/lockd")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return bin, cmd.Run()
}

// Main builds the binary for a test package's TestMain, runs the tests and
// exits. *bin is set before the tests run.
func Main(m *testing.M, bin *string) {
	dir, err := os.MkdirTemp("", "lockd-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if *bin, err = Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "building lockd:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Proc is one lockd process started by a test.
type Proc struct {
	t    testing.TB
	bin  string
	Name string
	Args []string
	Dir  string // working directory
	Addr string // host:port it serves on
	Log  *Buffer
	cmd  *exec.Cmd
	done chan struct{}
}

// Buffer is a goroutine-safe log buffer.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start starts `bin args…` in dir; the process serves on addr. It is killed
// when the test ends, and its log is printed if the test failed.
func Start(t testing.TB, bin, name, dir, addr string, args ...string) *Proc {
	t.Helper()
	p := &Proc{t: t, bin: bin, Name: name, Args: args, Dir: dir, Addr: addr, Log: &Buffer{}}
	p.Restart()
	t.Cleanup(func() {
		p.Signal(syscall.SIGCONT)
		p.Signal(syscall.SIGKILL)
		p.Wait(10 * time.Second)
		if t.Failed() {
			t.Logf("--- log of %s ---\n%s", p.Name, p.Log.String())
		}
	})
	return p
}

// Restart starts the process again with the same arguments (after it
// exited).
func (p *Proc) Restart() {
	p.t.Helper()
	p.cmd = exec.Command(p.bin, p.Args...)
	p.cmd.Dir = p.Dir
	p.cmd.Stdout, p.cmd.Stderr = p.Log, p.Log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("starting %s: %v", p.Name, err)
	}
	p.done = make(chan struct{})
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
}

// Signal sends s to the process.
func (p *Proc) Signal(s syscall.Signal) {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(s)
	}
}

// Wait waits for the process to exit and returns its exit code.
func (p *Proc) Wait(timeout time.Duration) (int, bool) {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), true
	case <-time.After(timeout):
		return 0, false
	}
}

// URL is the node's base URL.
func (p *Proc) URL() string { return "http://" + p.Addr }

// Status asks the node for its cluster status.
func (p *Proc) Status(ctx context.Context) (*lockdv1.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := lockdv1connect.NewClusterServiceClient(http.DefaultClient, p.URL()).Status(ctx, connect.NewRequest(&lockdv1.StatusRequest{}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// FreeAddrs reserves n loopback ports. They are released before the
// processes bind them, which is racy in theory and fine on a test machine.
func FreeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var addrs []string
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return addrs
}

// Eventually polls cond until it returns nil or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v: %v", what, timeout, err)
}

// StartCluster starts a static cluster of size processes named n1…nN.
func StartCluster(t testing.TB, bin string, size int, extra ...string) []*Proc {
	t.Helper()
	addrs := FreeAddrs(t, size)
	var initial []string
	for i, a := range addrs {
		initial = append(initial, fmt.Sprintf("n%d=http://%s", i+1, a))
	}
	base := t.TempDir()
	var procs []*Proc
	for i, a := range addrs {
		name := fmt.Sprintf("n%d", i+1)
		args := append([]string{"serve", "--name", name, "--data-dir", filepath.Join(base, name), "--listen", a,
			"--initial-cluster", strings.Join(initial, ","), "--log-format", "json"}, extra...)
		procs = append(procs, Start(t, bin, name, base, a, args...))
	}
	return procs
}

// LeaderOf waits until every given process agrees on one leader among them
// and returns it.
func LeaderOf(t testing.TB, procs []*Proc, timeout time.Duration) *Proc {
	t.Helper()
	var leader *Proc
	Eventually(t, timeout, "an agreed leader", func() error {
		leader = nil
		names := map[string]bool{}
		for _, p := range procs {
			st, err := p.Status(context.Background())
			if err != nil {
				return fmt.Errorf("%s: %w", p.Name, err)
			}
			if st.Leader == "" {
				return fmt.Errorf("%s knows no leader", p.Name)
			}
			names[st.Leader] = true
			if st.State == "leader" {
				leader = p
			}
		}
		if len(names) != 1 || leader == nil {
			return fmt.Errorf("leaders seen: %v", names)
		}
		return nil
	})
	return leader
}

// Others returns procs without p.
func Others(procs []*Proc, p *Proc) []*Proc {
	var out []*Proc
	for _, q := range procs {
		if q != p {
			out = append(out, q)
		}
	}
	return out
}
