package nemesis

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
	"github.com/lockd-io/lockd/internal/testcluster"
)

// faultKinds are the faults the nemesis injects, in the order the summary
// lists their counts. "partition-2" (a minority of two) is also counted as
// a "partition"; "overlapping" counts the faults started while another was
// active.
var faultKinds = []string{"kill", "pause", "partition", "partition-2", "bridge", "slow-link", "slow-disk", "transfer", "replace", "overlapping"}

// rules are a node's fault rules as POST /debug/faults takes them: each
// request replaces them all.
type rules struct {
	drop []string // peers, by name, it stops sending to
	link time.Duration
	disk time.Duration
}

func (r rules) equal(o rules) bool {
	return slices.Equal(r.drop, o.drop) && r.link == o.link && r.disk == o.disk
}

// postFaults sends a node its rules once.
func postFaults(ctx context.Context, p *testcluster.Proc, r rules) error {
	body, _ := json.Marshal(map[string]any{"drop": r.drop, "delay": r.link.String(), "disk_delay": r.disk.String()})
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.URL()+"/debug/faults", bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: POST /debug/faults: %s", p.Name, resp.Status)
	}
	return nil
}

// setFaults sends a node its rules, retrying for about ten seconds (a node
// may be starting).
func setFaults(p *testcluster.Proc, r rules) error {
	var err error
	for range 20 {
		if err = postFaults(context.Background(), p, r); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

// pusher keeps one node's rules in force: it sends the latest rules the
// nemesis wants whenever the node runs and has not acknowledged them, also
// after a restart (a node starts with no faults). The nemesis never blocks
// on a paused or dead node.
type pusher struct {
	kick chan struct{}

	mu      sync.Mutex
	proc    *testcluster.Proc
	want    rules
	version int
	sent    int  // the version the node acknowledged
	gen     int  // bumped at each restart: an acknowledgement from before does not count
	up      bool // running (not killed, not paused)
}

func newPusher(p *testcluster.Proc) *pusher {
	return &pusher{kick: make(chan struct{}, 1), proc: p, up: true}
}

func (u *pusher) poke() {
	select {
	case u.kick <- struct{}{}:
	default:
	}
}

func (u *pusher) set(p *testcluster.Proc, r rules) {
	u.mu.Lock()
	if u.proc != p {
		u.proc, u.sent, u.gen = p, -1, u.gen+1
	}
	if !u.want.equal(r) {
		u.want = r
		u.version++
	}
	u.mu.Unlock()
	u.poke()
}

// state records that the node stopped or runs again (restarted: with no
// rules).
func (u *pusher) state(up, restarted bool) {
	u.mu.Lock()
	u.up = up
	if restarted {
		u.sent, u.gen = -1, u.gen+1
	}
	u.mu.Unlock()
	u.poke()
}

func (u *pusher) run(ctx context.Context) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-u.kick:
		case <-tick.C:
		}
		u.mu.Lock()
		p, want, v, gen, need := u.proc, u.want, u.version, u.gen, u.up && u.sent != u.version
		u.mu.Unlock()
		if !need {
			continue
		}
		if postFaults(ctx, p, want) == nil {
			u.mu.Lock()
			if u.gen == gen {
				u.sent = max(u.sent, v)
			}
			u.mu.Unlock()
		}
	}
}

// fault is one active fault: what it does to the cluster while it lasts,
// and how it is healed.
type fault struct {
	kind  string
	until time.Time
	down  []int                 // nodes killed or paused
	cut   [][2]int              // links cut, both ways
	link  map[int]time.Duration // outgoing delay by node
	disk  map[int]time.Duration // synced-write delay by node
	heal  func()
	label string
}

// chaos is the nemesis's view of the cluster: the active faults, and the
// pushers that put their rules in force.
type chaos struct {
	procs   []*testcluster.Proc
	rec     *recorder
	rng     *rand.Rand
	active  []*fault
	pushers []*pusher
	counts  map[string]int
}

func (c *chaos) log(format string, args ...any) {
	line := fmt.Sprintf("%8.3fs ", c.rec.since().Seconds()) + fmt.Sprintf(format, args...)
	c.rec.mu.Lock()
	c.rec.faults = append(c.rec.faults, line)
	c.rec.mu.Unlock()
}

func (c *chaos) isDown(faults []*fault, i int) bool {
	for _, f := range faults {
		if slices.Contains(f.down, i) {
			return true
		}
	}
	return false
}

func isCut(faults []*fault, i, j int) bool {
	for _, f := range faults {
		for _, e := range f.cut {
			if e == [2]int{i, j} || e == [2]int{j, i} {
				return true
			}
		}
	}
	return false
}

// quorate reports whether, with faults active, some running node can reach
// a majority of the members (itself included) that run: a leader can then
// be elected and make progress.
func (c *chaos) quorate(faults []*fault) bool {
	n := len(c.procs)
	for l := range n {
		if c.isDown(faults, l) {
			continue
		}
		reach := 0
		for q := range n {
			if !c.isDown(faults, q) && (q == l || !isCut(faults, l, q)) {
				reach++
			}
		}
		if reach > n/2 {
			return true
		}
	}
	return false
}

// sync computes every node's rules from the active faults and hands them
// to the pushers.
func (c *chaos) sync() {
	for i, p := range c.procs {
		var r rules
		for j, q := range c.procs {
			if j != i && isCut(c.active, i, j) {
				r.drop = append(r.drop, q.Name)
			}
		}
		for _, f := range c.active {
			r.link = max(r.link, f.link[i])
			r.disk = max(r.disk, f.disk[i])
		}
		c.pushers[i].set(p, r)
	}
}

func (c *chaos) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(c.rng.Int64N(int64(hi-lo)))
}

// victim picks a node, the leader two times in three when there is one.
func (c *chaos) victim(leader *testcluster.Proc) int {
	if leader != nil && c.rng.IntN(3) > 0 {
		return slices.Index(c.procs, leader)
	}
	return c.rng.IntN(len(c.procs))
}

// plan draws a fault of one of kinds; it is not started yet. Transfers are
// instantaneous and have no plan.
func (c *chaos) plan(kind string, v int) *fault {
	n := len(c.procs)
	f := &fault{kind: kind, link: map[int]time.Duration{}, disk: map[int]time.Duration{}}
	name := c.procs[v].Name
	switch kind {
	case "kill":
		f.down, f.until = []int{v}, time.Now().Add(c.between(300*time.Millisecond, 2*time.Second))
		f.label = "kill " + name
	case "pause":
		f.down, f.until = []int{v}, time.Now().Add(c.between(300*time.Millisecond, 2500*time.Millisecond))
		f.label = "pause " + name
	case "partition", "partition-2":
		group := []int{v}
		if kind == "partition-2" {
			// A minority of two, the leader among them or not.
			group = append(group, (v+1+c.rng.IntN(n-1))%n)
		}
		var names []string
		for i := range n {
			if slices.Contains(group, i) {
				names = append(names, c.procs[i].Name)
				continue
			}
			for _, g := range group {
				f.cut = append(f.cut, [2]int{g, i})
			}
		}
		f.until = time.Now().Add(c.between(500*time.Millisecond, 3*time.Second))
		f.label = "partition " + strings.Join(names, ",") + " from the rest"
	case "bridge":
		// n1,n2 | n4,n5, with n3 talking to both sides (by position:
		// members are renamed when replaced).
		side := []int{1, 1, 0, 2, 2}
		for i := range n {
			for j := i + 1; j < n; j++ {
				if side[i] != 0 && side[j] != 0 && side[i] != side[j] {
					f.cut = append(f.cut, [2]int{i, j})
				}
			}
		}
		f.until = time.Now().Add(c.between(500*time.Millisecond, 3*time.Second))
		f.label = "bridge through " + c.procs[2].Name
	case "slow-link":
		d := c.between(20*time.Millisecond, 100*time.Millisecond)
		f.link[v], f.until = d, time.Now().Add(c.between(500*time.Millisecond, 2*time.Second))
		f.label = fmt.Sprintf("slow link %v from %s", d, name)
	case "slow-disk":
		d := c.between(5*time.Millisecond, 50*time.Millisecond)
		f.disk[v], f.until = d, time.Now().Add(c.between(500*time.Millisecond, 3*time.Second))
		f.label = fmt.Sprintf("slow disk %v on %s", d, name)
	}
	return f
}

// start puts a planned fault in force.
func (c *chaos) start(f *fault) {
	c.log("start %s (until +%v)", f.label, time.Until(f.until).Round(time.Millisecond))
	if len(c.active) > 0 {
		c.counts["overlapping"]++
	}
	c.counts[f.kind]++
	if f.kind == "partition-2" {
		c.counts["partition"]++
	}
	for _, i := range f.down {
		p, u := c.procs[i], c.pushers[i]
		u.state(false, false)
		switch f.kind {
		case "kill":
			p.Signal(syscall.SIGKILL)
			p.Wait(10 * time.Second)
			f.heal = func() { p.Restart(); u.state(true, true) }
		case "pause":
			p.Signal(syscall.SIGSTOP)
			f.heal = func() { p.Signal(syscall.SIGCONT); u.state(true, false) }
		}
	}
	c.active = append(c.active, f)
	c.sync()
}

func (c *chaos) heal(f *fault) {
	c.log("heal %s", f.label)
	c.active = slices.DeleteFunc(c.active, func(g *fault) bool { return g == f })
	if f.heal != nil {
		f.heal()
	}
	c.sync()
}

// transfer asks the cluster to hand leadership to a random other member,
// or, one time in three, to whichever member it picks.
func (c *chaos) transfer(client *lockd.Client, leader *testcluster.Proc) {
	if len(c.active) > 0 {
		c.counts["overlapping"]++
	}
	c.counts["transfer"]++
	target := ""
	if c.rng.IntN(3) > 0 {
		var others []string
		for _, p := range c.procs {
			if p != leader {
				others = append(others, p.Name)
			}
		}
		target = others[c.rng.IntN(len(others))]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	got, err := client.TransferLeader(ctx, target)
	cancel()
	if err != nil {
		c.log("transfer of leadership to %q: %v", target, err)
		return
	}
	c.log("transfer of leadership to %q: %s leads", target, got)
}

// nemesis injects faults until ctx ends, several at a time (a second or
// third fault may start while others last), never so many that no
// majority can work; then it heals everything: paused nodes continue,
// killed ones restart, every rule is cleared. A membership change runs
// alone and replaces an element of procs. It returns a count of the
// faults, of every kind.
func nemesis(ctx context.Context, t *testing.T, bin string, procs []*testcluster.Proc, rec *recorder, rng *rand.Rand) string {
	c := &chaos{procs: procs, rec: rec, rng: rng, counts: map[string]int{}}
	pctx, stopPushers := context.WithCancel(context.Background())
	var pushing sync.WaitGroup
	for _, p := range procs {
		u := newPusher(p)
		c.pushers = append(c.pushers, u)
		pushing.Add(1)
		go func() { defer pushing.Done(); u.run(pctx) }()
	}
	var eps []string
	for _, p := range procs {
		eps = append(eps, p.Addr) // a replaced member keeps its address
	}
	client, err := lockd.New(eps)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	kinds := []string{"kill", "pause", "partition", "slow-link", "slow-disk", "transfer"}
	if len(procs) == 5 {
		kinds = append(kinds, "partition-2", "bridge")
	}
	maxActive := 2
	if len(procs) == 5 {
		maxActive = 3
	}
	next := time.Now().Add(c.between(500*time.Millisecond, 1500*time.Millisecond))
	for {
		wake := next
		for _, f := range c.active {
			if f.until.Before(wake) {
				wake = f.until
			}
		}
		timer := time.NewTimer(time.Until(wake))
		select {
		case <-ctx.Done():
			timer.Stop()
		case <-timer.C:
		}
		if ctx.Err() != nil {
			break
		}
		now := time.Now()
		for _, f := range slices.Clone(c.active) {
			if !f.until.After(now) {
				c.heal(f)
			}
		}
		if now.Before(next) {
			continue
		}
		next = now.Add(c.between(300*time.Millisecond, 1500*time.Millisecond))
		switch {
		case len(c.active) == 0 && rng.IntN(10) == 0:
			c.counts["replace"]++
			i := c.victim(currentLeader(procs))
			old := procs[i]
			c.log("replace %s", old.Name)
			err := replaceMember(t, bin, procs, i, c.counts["replace"])
			c.log("replaced %s by %s: %v", old.Name, procs[i].Name, err)
			rec.mu.Lock()
			rec.retired = append(rec.retired, old)
			if err != nil {
				rec.problems = append(rec.problems, "membership change: "+err.Error())
			}
			rec.mu.Unlock()
			c.sync() // the new member's pusher follows it
			next = time.Now().Add(c.between(300*time.Millisecond, 1500*time.Millisecond))
		case len(c.active) >= maxActive || (len(c.active) > 0 && rng.IntN(5) < 2):
			// Let the active faults run their course.
		default:
			// Draw until the fault would leave a working majority; a
			// node already down is not hit again.
			leader := currentLeader(procs)
			for range 10 {
				kind, v := kinds[rng.IntN(len(kinds))], c.victim(leader)
				if kind == "transfer" {
					c.transfer(client, leader)
					break
				}
				f := c.plan(kind, v)
				if slices.ContainsFunc(f.down, func(i int) bool { return c.isDown(c.active, i) }) ||
					!c.quorate(append(slices.Clone(c.active), f)) {
					continue
				}
				c.start(f)
				break
			}
		}
	}

	// Heal everything, whatever its planned end.
	for len(c.active) > 0 {
		c.heal(c.active[len(c.active)-1])
	}
	stopPushers()
	pushing.Wait()
	for _, p := range procs {
		p.Signal(syscall.SIGCONT)
	}
	for _, p := range procs {
		if err := setFaults(p, rules{}); err != nil {
			rec.mu.Lock()
			rec.problems = append(rec.problems, fmt.Sprintf("could not clear the faults of %s after the run: %v", p.Name, err))
			rec.mu.Unlock()
		}
	}
	c.log("healed")
	var out []string
	for _, k := range faultKinds {
		out = append(out, fmt.Sprintf("%s %d", k, c.counts[k]))
	}
	return strings.Join(out, ", ")
}
