package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// campaignMain is a child of the failover workload: it campaigns, prints
// "elected UNIXNANO" once it leads, and keeps its session alive until it is
// killed or the duration ends.
func campaignMain(sys system, ttl, duration time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	if err := sys.campaign(ctx, ttl, "bench/election"); err != nil {
		fail(err)
	}
	fmt.Printf("elected %d\n", time.Now().UnixNano())
	<-ctx.Done()
}

// failover measures how long an election has no leader after the process
// that leads it is SIGKILLed: two processes campaign, the winner is killed,
// and the time until the standby reports leadership is the gap. It runs
// rounds rounds and reports the median (and the worst in P99us).
func failover(kind, endpoints string, ttl time.Duration, rounds int) result {
	var gaps []time.Duration
	for range rounds {
		gap, err := failoverRound(kind, endpoints, ttl)
		if err != nil {
			fail(err)
		}
		gaps = append(gaps, gap)
	}
	slices.Sort(gaps)
	return result{
		Ops:   int64(len(gaps)),
		GapMs: gaps[len(gaps)/2].Milliseconds(),
		P50us: gaps[len(gaps)/2].Microseconds(),
		P99us: gaps[len(gaps)-1].Microseconds(),
	}
}

type campaigner struct {
	cmd     *exec.Cmd
	elected chan time.Time
}

func startCampaigner(kind, endpoints string, ttl time.Duration) (*campaigner, error) {
	cmd := exec.Command(os.Args[0], "-system", kind, "-endpoints", endpoints, "-workload", "campaign",
		"-ttl", ttl.String(), "-duration", "2m")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &campaigner{cmd: cmd, elected: make(chan time.Time, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if ns, ok := strings.CutPrefix(sc.Text(), "elected "); ok {
				n, _ := strconv.ParseInt(ns, 10, 64)
				c.elected <- time.Unix(0, n)
			}
		}
	}()
	return c, nil
}

func (c *campaigner) kill() {
	c.cmd.Process.Signal(syscall.SIGKILL)
	c.cmd.Wait()
}

func failoverRound(kind, endpoints string, ttl time.Duration) (time.Duration, error) {
	a, err := startCampaigner(kind, endpoints, ttl)
	if err != nil {
		return 0, err
	}
	defer a.kill()
	select {
	case <-a.elected:
	case <-time.After(time.Minute):
		return 0, fmt.Errorf("the first campaigner was not elected within a minute")
	}
	b, err := startCampaigner(kind, endpoints, ttl)
	if err != nil {
		return 0, err
	}
	defer b.kill()
	// Let the standby's session and campaign reach the server, then kill
	// at a random point of the leader's keep-alive cycle (TTL/3 long): the
	// gap is the TTL left since its last keep-alive, plus detection.
	time.Sleep(time.Second + rand.N(ttl/3))
	killed := time.Now()
	a.kill()
	select {
	case t := <-b.elected:
		return t.Sub(killed), nil
	case <-time.After(time.Minute):
		return 0, fmt.Errorf("the standby was not elected within a minute of the leader's SIGKILL")
	}
}
