package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
)

// lockCmd runs `lockd lock NAME [flags] -- CMD ARGS…`.
func lockCmd(args []string, stdout, stderr io.Writer) error {
	var (
		cf         clientFlags
		wait       time.Duration
		skipIfHeld bool
		grace      time.Duration
	)
	fs := newFlagSet("lock", "lock NAME [flags] -- CMD [ARGS…]", stderr)
	cf.register(fs)
	fs.DurationVar(&wait, "wait", 0, "give up after waiting this long (exit 75); 0 waits for as long as it takes")
	fs.BoolVar(&skipIfHeld, "skip-if-held", false, "exit 75 at once, without running CMD, if the lock is taken")
	fs.DurationVar(&grace, "grace", 0, "time between SIGTERM and SIGKILL when CMD must stop (default TTL/4, at most 5s)")
	pos, command, err := cf.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || len(command) == 0 {
		return usageError{errors.New("usage: lockd lock NAME [flags] -- CMD [ARGS…]")}
	}
	name := pos[0]
	c, err := cf.client()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	host, _ := os.Hostname()
	s, err := c.NewSession(ctx, lockd.WithTTL(cf.ttl), lockd.WithOwner(fmt.Sprintf("lockd lock on %s (pid %d)", host, os.Getpid())))
	if err != nil {
		return describeErr(err)
	}
	defer closeSession(s)
	m := lockd.NewMutex(s, name)
	var got bool
	switch {
	case skipIfHeld:
		got, err = m.TryLock(ctx)
	case wait > 0:
		got, err = m.LockWithin(ctx, wait)
	default:
		err = m.Lock(ctx)
		got = err == nil
	}
	if err != nil {
		return describeErr(err)
	}
	if !got {
		return exitCodeError{exitNotAcquired, fmt.Errorf("lock %q is held by someone else", name)}
	}
	env := []string{
		"LOCKD_FENCING_TOKEN=" + strconv.FormatUint(m.Token(), 10),
		"LOCKD_LOCK_NAME=" + name,
		"LOCKD_LEASE_ID=" + strconv.FormatUint(s.ID(), 10),
	}
	code, err := supervise(ctx, s, m.Context(), command, env, grace, stderr)
	unlockCtx, cancel := cleanupContext(s)
	defer cancel()
	m.Unlock(unlockCtx)
	if err != nil {
		return err
	}
	return exitCodeError{code, nil}
}

// closeSession revokes the session with a deadline of its own, so that a
// cancelled command context cannot leave the lease to expire on its own.
func closeSession(s *lockd.Session) {
	ctx, cancel := cleanupContext(s)
	defer cancel()
	s.Close(ctx)
}

// cleanupContext bounds the release and revoke that follow a command: 5s at
// most, and no later than the session's local deadline, past which the
// lease is gone or going anyway (the server may be unreachable).
func cleanupContext(s *lockd.Session) (context.Context, context.CancelFunc) {
	deadline := time.Now().Add(5 * time.Second)
	if d := s.Deadline(); d.Before(deadline) {
		deadline = d
	}
	return context.WithDeadline(context.Background(), deadline)
}

// supervise runs command in its own process group while the grant lives.
// When the grant is about to be lost (the session's local deadline is within
// grace and no keep-alive moved it) it sends SIGTERM to the group, and
// SIGKILL at the deadline, which comes before the server could give the
// lock to anybody else. When the grant is lost outright (force release) or
// lockd itself is told to stop, it sends SIGTERM, then SIGKILL after grace.
// When the command exits, whatever it left running in its group is stopped
// the same way before supervise returns, so nothing started under the lock
// outlives it. It returns the command's exit status (128+signal if killed).
func supervise(ctx context.Context, s *lockd.Session, held context.Context, command, env []string, grace time.Duration, stderr io.Writer) (int, error) {
	if grace <= 0 {
		grace = min(s.TTL()/4, 5*time.Second)
	}
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting %s: %w", command[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	group := -cmd.Process.Pid
	alive := func() bool { return syscall.Kill(group, 0) == nil }
	var (
		termAt, killAt, killedAt time.Time // zero until decided or done
		code                     = -1      // the command's exit status, once it exited
	)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			code = exitStatus(cmd, err)
		case <-tick.C:
		}
		now := time.Now()
		// The command has exited. Whatever it started in its group must
		// not outlive the lock either: lockd returns (and the lock is
		// released) once the group is gone. A SIGKILLed process that
		// lingers as a zombie is given a second to be reaped.
		if code >= 0 {
			if !alive() || (!killedAt.IsZero() && now.Sub(killedAt) > time.Second) {
				return code, nil
			}
			if termAt.IsZero() {
				fmt.Fprintln(stderr, "lockd: the command exited and left processes running; stopping them")
				termAt, killAt = now, now.Add(grace)
				if d := s.Deadline(); d.Before(killAt) {
					killAt = d
				}
				syscall.Kill(group, syscall.SIGTERM)
			}
		}
		if termAt.IsZero() {
			switch {
			case ctx.Err() != nil:
				fmt.Fprintln(stderr, "lockd: stopping the command (signalled)")
				termAt, killAt = now, now.Add(grace)
			case held.Err() != nil:
				fmt.Fprintf(stderr, "lockd: lock lost (%v); stopping the command\n", context.Cause(held))
				termAt, killAt = now, now.Add(grace)
			case time.Until(s.Deadline()) <= grace:
				// No keep-alive has been acknowledged for TTL - grace: stop
				// the command now, and kill it at the deadline at the latest.
				fmt.Fprintln(stderr, "lockd: cannot renew the lease; stopping the command before the lock can be lost")
				termAt, killAt = now, s.Deadline()
			}
			if !termAt.IsZero() {
				syscall.Kill(group, syscall.SIGTERM)
			}
		}
		if killedAt.IsZero() && !killAt.IsZero() && !now.Before(killAt) {
			syscall.Kill(group, syscall.SIGKILL)
			killedAt = now
		}
	}
}

// exitStatus is the status a shell would report for the command.
func exitStatus(cmd *exec.Cmd, err error) int {
	if cmd.ProcessState == nil {
		return exitError
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return cmd.ProcessState.ExitCode()
}

// electCmd runs `lockd elect NAME --value V -- CMD…` and
// `lockd elect NAME --observe`.
func electCmd(args []string, stdout, stderr io.Writer) error {
	var (
		cf      clientFlags
		value   string
		observe bool
		grace   time.Duration
	)
	fs := newFlagSet("elect", "elect NAME --value V [flags] -- CMD [ARGS…]  |  lockd elect NAME --observe", stderr)
	cf.register(fs)
	fs.StringVar(&value, "value", "", "the leader's value while this process leads (e.g. its address)")
	fs.BoolVar(&observe, "observe", false, "print every change of leader instead of campaigning")
	fs.DurationVar(&grace, "grace", 0, "time between SIGTERM and SIGKILL when CMD must stop (default TTL/4, at most 5s)")
	pos, command, err := cf.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || (observe == (len(command) > 0)) {
		return usageError{errors.New("usage: lockd elect NAME --value V -- CMD [ARGS…], or lockd elect NAME --observe")}
	}
	name := pos[0]
	c, err := cf.client()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if observe {
		return observeCmd(ctx, c, name, cf.output, stdout)
	}
	host, _ := os.Hostname()
	s, err := c.NewSession(ctx, lockd.WithTTL(cf.ttl), lockd.WithOwner(fmt.Sprintf("lockd elect on %s (pid %d)", host, os.Getpid())))
	if err != nil {
		return describeErr(err)
	}
	defer closeSession(s)
	e := lockd.NewElection(s, name)
	if err := e.Campaign(ctx, []byte(value)); err != nil {
		return describeErr(err)
	}
	fmt.Fprintf(stderr, "lockd: leading %q in term %d\n", name, e.Term())
	env := []string{
		"LOCKD_FENCING_TOKEN=" + strconv.FormatUint(e.Term(), 10),
		"LOCKD_ELECTION_TERM=" + strconv.FormatUint(e.Term(), 10),
		"LOCKD_ELECTION_NAME=" + name,
		"LOCKD_LEASE_ID=" + strconv.FormatUint(s.ID(), 10),
	}
	code, err := supervise(ctx, s, e.Context(), command, env, grace, stderr)
	rctx, cancel := cleanupContext(s)
	defer cancel()
	e.Resign(rctx)
	if err != nil {
		return err
	}
	return exitCodeError{code, nil}
}

func observeCmd(ctx context.Context, c *lockd.Client, name, output string, stdout io.Writer) error {
	for o := range c.Observe(ctx, name) {
		if output == "json" {
			v := map[string]any{"revision": o.Revision, "leader": nil}
			if l := o.Leader; l != nil {
				v["leader"] = map[string]any{"value": string(l.Value), "term": l.Term, "lease_id": l.LeaseID, "owner": l.Owner}
			}
			printJSON(stdout, v)
			continue
		}
		if o.Leader == nil {
			fmt.Fprintf(stdout, "revision %d: no leader\n", o.Revision)
		} else {
			fmt.Fprintf(stdout, "revision %d: leader %q (term %d, lease %d, %s)\n", o.Revision, o.Leader.Value, o.Leader.Term, o.Leader.LeaseID, o.Leader.Owner)
		}
	}
	return nil
}
