package main

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

// lockdBin is the lockd binary the process tests run, built once.
var lockdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lockd-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lockdBin = filepath.Join(dir, "lockd")
	build := exec.Command("go", "build", "-o", lockdBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building lockd:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is one lockd process started by a test.
type proc struct {
	t    testing.TB
	name string
	args []string
	dir  string // working directory
	addr string // host:port it serves on
	log  *syncBuffer
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startProc(t testing.TB, name, dir, addr string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, args: args, dir: dir, addr: addr, log: &syncBuffer{}}
	p.start()
	t.Cleanup(func() {
		p.signal(syscall.SIGKILL)
		p.wait(10 * time.Second)
		if t.Failed() {
			t.Logf("--- log of %s ---\n%s", p.name, p.log.String())
		}
	})
	return p
}

func (p *proc) start() {
	p.t.Helper()
	p.cmd = exec.Command(lockdBin, p.args...)
	p.cmd.Dir = p.dir
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("starting %s: %v", p.name, err)
	}
	p.done = make(chan struct{})
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
}

func (p *proc) signal(s syscall.Signal) {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(s)
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(timeout time.Duration) (int, bool) {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), true
	case <-time.After(timeout):
		return 0, false
	}
}

func (p *proc) client() lockdv1connect.ClusterServiceClient {
	return lockdv1connect.NewClusterServiceClient(http.DefaultClient, "http://"+p.addr)
}

func (p *proc) status(ctx context.Context) (*lockdv1.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := p.client().Status(ctx, connect.NewRequest(&lockdv1.StatusRequest{}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// freeAddrs reserves n loopback ports. They are released before the
// processes bind them, which is racy in theory and fine on a test machine.
func freeAddrs(t testing.TB, n int) []string {
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

// eventually polls cond until it returns nil or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
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

// testCluster starts a static cluster of size processes.
func startCluster(t testing.TB, size int, extra ...string) []*proc {
	t.Helper()
	addrs := freeAddrs(t, size)
	var initial []string
	for i, a := range addrs {
		initial = append(initial, fmt.Sprintf("n%d=http://%s", i+1, a))
	}
	base := t.TempDir()
	var procs []*proc
	for i, a := range addrs {
		name := fmt.Sprintf("n%d", i+1)
		args := append([]string{"serve", "--name", name, "--data-dir", filepath.Join(base, name), "--listen", a,
			"--initial-cluster", strings.Join(initial, ","), "--log-format", "json"}, extra...)
		procs = append(procs, startProc(t, name, base, a, args...))
	}
	return procs
}

// leaderOf waits until every live process agrees on one leader and returns it.
func leaderOf(t testing.TB, procs []*proc, timeout time.Duration) *proc {
	t.Helper()
	var leader *proc
	eventually(t, timeout, "an agreed leader", func() error {
		leader = nil
		names := map[string]bool{}
		for _, p := range procs {
			st, err := p.status(context.Background())
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			if st.Leader == "" {
				return fmt.Errorf("%s knows no leader", p.name)
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
