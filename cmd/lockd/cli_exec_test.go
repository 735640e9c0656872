package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cliIn runs a lockd client command in dir and returns its exit code, its
// stdout and its stderr apart.
func cliIn(t *testing.T, dir, addr string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(lockdBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LOCKD_ENDPOINTS="+addr)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.Run()
	return cmd.ProcessState.ExitCode(), out.String(), errOut.String()
}

// `lockd lock` runs its command without a shell: every argument reaches the
// command as it was given, metacharacters, globs, quotes, spaces and empty
// arguments included.
func TestCLILockPassesArgumentsLiterally(t *testing.T) {
	_, addr := startOne(t)
	dir := t.TempDir()
	// A file for a glob to match, were a shell to see the arguments.
	if err := os.WriteFile(filepath.Join(dir, "globbed"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"$HOME;echo x", "a  b", "*", "$(echo y)", "`echo z`", "", `"q"`, "it's", "x|wc -c", "a&&b>out"}
	code, stdout, stderr := cliIn(t, dir, addr, append([]string{"lock", "jobs/literal", "--", "printf", "%s|"}, args...)...)
	if code != 0 {
		t.Fatalf("lockd lock exited %d: %s", code, stderr)
	}
	if want := strings.Join(args, "|") + "|"; stdout != want {
		t.Fatalf("the command printed %q, want %q: its arguments were not passed literally", stdout, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); err == nil {
		t.Fatal("a redirection in an argument created a file: a shell ran the command")
	}
}

// procState returns the state letter of a process (R, S, Z, …), or "" if
// there is no such process.
func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold anything
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// parentOf returns the parent pid of a process, 0 if unknown.
func parentOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // state ppid pgrp …
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// alive reports whether pid runs (a zombie is dead; it waits to be reaped
// by whoever inherited it).
func alive(pid int) bool {
	st := procState(pid)
	return st != "" && st != "Z" && st != "X"
}

// startGrandchild starts `lockd lock --ttl ttl NAME -- sh -c script`, where
// script starts a background `sleep 300`, writes its pid to the file named
// by $PIDFILE and waits; it returns the lockd process and the sleep's pid.
// The sleep is killed when the test ends if it still runs.
func startGrandchild(t *testing.T, addr, name string, ttl time.Duration, script string) (*exec.Cmd, int) {
	t.Helper()
	pidFile := filepath.Join(t.TempDir(), "grandchild")
	lock := exec.Command(lockdBin, "lock", "--ttl", ttl.String(), name, "--", "sh", "-c", script)
	lock.Env = append(os.Environ(), "LOCKD_ENDPOINTS="+addr, "PIDFILE="+pidFile)
	if err := lock.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Process.Kill(); lock.Wait() })
	var pid int
	eventually(t, 10*time.Second, "the grandchild started", func() error {
		b, err := os.ReadFile(pidFile)
		if err == nil {
			pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		return err
	})
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if string(cmdline) != "sleep\x00300\x00" {
		t.Fatalf("pid %d is %q, not the grandchild sleep", pid, cmdline)
	}
	t.Cleanup(func() {
		// Only if it is still the sleep this test started.
		if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); alive(pid) && bytes.Equal(b, cmdline) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	// The command (the sh, the grandchild's parent) leads a group of its
	// own, which the grandchild is in.
	pgid, err := syscall.Getpgid(pid)
	if sh := parentOf(pid); err != nil || pgid != sh || pgid == syscall.Getpgrp() || pgid == lock.Process.Pid {
		t.Fatalf("the grandchild's process group is %d (%v); want the command's (pid %d), not the test's (%d) or lockd's (%d)", pgid, err, sh, syscall.Getpgrp(), lock.Process.Pid)
	}
	return lock, pid
}

// loseLease makes the lone server unreachable after a keep-alive or two,
// then waits until pid is dead, failing if it still runs within bound. It
// returns how long that took.
func loseLease(t *testing.T, srv *proc, pid int, ttl, bound time.Duration) time.Duration {
	t.Helper()
	time.Sleep(ttl / 2)
	srv.Signal(syscall.SIGSTOP)
	stopped := time.Now()
	t.Cleanup(func() { srv.Signal(syscall.SIGCONT) })
	for alive(pid) {
		if time.Since(stopped) > bound {
			t.Fatalf("the grandchild (pid %d, state %s) still runs %v after the server became unreachable (TTL %v)", pid, procState(pid), time.Since(stopped), ttl)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(stopped)
}

// waitExit waits for lockd to exit and returns its exit code.
func waitExit(t *testing.T, lock *exec.Cmd, timeout time.Duration) int {
	t.Helper()
	done := make(chan struct{})
	go func() { lock.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatalf("lockd lock did not exit within %v", timeout)
	}
	return lock.ProcessState.ExitCode()
}

// The command runs in its own process group, and losing the lease stops the
// whole group: a process the command started in the background dies too,
// before the lease's TTL runs out.
func TestCLIKillsCommandsProcessGroupWhenLeaseLost(t *testing.T) {
	srv, addr := startOne(t)
	const ttl = 2 * time.Second
	lock, pid := startGrandchild(t, addr, "doomed-group", ttl, `sleep 300 & echo $! > "$PIDFILE"; wait`)
	died := loseLease(t, srv, pid, ttl, ttl)
	if code := waitExit(t, lock, 10*time.Second); code == 0 {
		t.Fatal("lockd lock exited 0 after losing its lease")
	}
	t.Logf("grandchild dead %v after the server became unreachable (TTL %v)", died, ttl)
}

// A process of the group that ignores SIGTERM is SIGKILLed at the client
// deadline, when the command itself ignores SIGTERM too (it is still running
// when the deadline comes).
func TestCLIKillsGroupIgnoringSIGTERMAtDeadline(t *testing.T) {
	srv, addr := startOne(t)
	const ttl = 2 * time.Second
	lock, pid := startGrandchild(t, addr, "doomed-stubborn", ttl, `trap "" TERM; sleep 300 & echo $! > "$PIDFILE"; wait`)
	died := loseLease(t, srv, pid, ttl, ttl)
	if code := waitExit(t, lock, 10*time.Second); code != 128+int(syscall.SIGKILL) {
		t.Fatalf("lockd lock exited %d, want %d (the command killed by SIGKILL)", code, 128+int(syscall.SIGKILL))
	}
	t.Logf("grandchild dead %v after the server became unreachable (TTL %v)", died, ttl)
}

// A process of the group that ignores SIGTERM must be dead by the client
// deadline even when the command itself (the group's leader) exits on the
// SIGTERM: lockd must not stop supervising the group when its leader exits.
func TestCLIKillsGroupAfterCommandExitsOnSIGTERM(t *testing.T) {
	srv, addr := startOne(t)
	const ttl = 2 * time.Second
	lock, pid := startGrandchild(t, addr, "doomed-orphan", ttl, `(trap "" TERM; exec sleep 300) & echo $! > "$PIDFILE"; wait`)
	died := loseLease(t, srv, pid, ttl, ttl)
	waitExit(t, lock, 10*time.Second)
	t.Logf("grandchild dead %v after the server became unreachable (TTL %v)", died, ttl)
}

// A command that exits normally but leaves a process running in its group
// does not leave it running past the lock: lockd stops it before it
// returns (and releases the lock), and passes the command's status on.
func TestCLIStopsLeftoversWhenCommandExits(t *testing.T) {
	_, addr := startOne(t)
	lock, pid := startGrandchild(t, addr, "leftovers", 10*time.Second,
		`sleep 300 & echo $! > "$PIDFILE"; while [ ! -e "$PIDFILE.go" ]; do sleep 0.05; done; exit 3`)
	pidFile := strings.TrimPrefix(lock.Env[len(lock.Env)-1], "PIDFILE=")
	if err := os.WriteFile(pidFile+".go", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := waitExit(t, lock, 10*time.Second); code != 3 {
		t.Errorf("lockd lock exited %d, want the command's 3", code)
	}
	if alive(pid) {
		t.Errorf("the command's background process %d still runs after lockd lock returned", pid)
	}
}

// `lockd elect NAME --value V -- CMD` exits with the command's status, a
// signal's as a shell reports it (128+n).
func TestCLIElectExitCode(t *testing.T) {
	_, addr := startOne(t)
	dir := t.TempDir()
	if code, _, stderr := cliIn(t, dir, addr, "elect", "exit-code", "--value", "v", "--", "sh", "-c", "exit 9"); code != 9 {
		t.Fatalf("elect exited %d, want the command's 9: %s", code, stderr)
	}
	if code, _, stderr := cliIn(t, dir, addr, "elect", "exit-code", "--value", "v", "--", "sh", "-c", `kill -TERM $$`); code != 128+int(syscall.SIGTERM) {
		t.Fatalf("elect exited %d, want %d for a command killed by SIGTERM: %s", code, 128+int(syscall.SIGTERM), stderr)
	}
	if code, _, stderr := cliIn(t, dir, addr, "elect", "exit-code", "--value", "v", "--", "true"); code != 0 {
		t.Fatalf("elect exited %d, want 0: %s", code, stderr)
	}
	if code, _, _ := cliIn(t, dir, addr, "elect", "exit-code", "--value", "v"); code != exitUsage {
		t.Fatalf("elect without a command exited %d, want %d", code, exitUsage)
	}
}
