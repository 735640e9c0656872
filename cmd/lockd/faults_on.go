//go:build lockd_faults

package main

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/lockd-io/lockd/node"
)

// injectedFaults lets a test cut and slow this node's outgoing peer links,
// and slow its disk, at run time, through POST /debug/faults. It exists only
// in binaries built with -tags lockd_faults, which the fault-injection
// (nemesis) tests build.
type injectedFaults struct {
	mu    sync.Mutex
	drop  map[uint64]bool
	delay time.Duration
	disk  time.Duration
}

// faultRules is the body of POST /debug/faults: the peers this node stops
// sending to, by name, a delay on every outgoing batch, and a delay before
// every synced write of the log. Each request replaces all the rules: a
// field left out is cleared.
type faultRules struct {
	Drop      []string `json:"drop"`
	Delay     string   `json:"delay"`
	DiskDelay string   `json:"disk_delay"`
}

var (
	_ node.Faults     = (*injectedFaults)(nil)
	_ node.DiskFaults = (*injectedFaults)(nil)
)

func (f *injectedFaults) Outbound(from, to uint64) (bool, time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.drop[to], f.delay
}

// WriteDelay is how long each synced log write waits first.
func (f *injectedFaults) WriteDelay() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.disk
}

func (f *injectedFaults) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var rules faultRules
	if err := json.NewDecoder(r.Body).Decode(&rules); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var delays [2]time.Duration
	for i, s := range []string{rules.Delay, rules.DiskDelay} {
		if s == "" {
			continue
		}
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			http.Error(w, "bad delay "+s, http.StatusBadRequest)
			return
		}
		delays[i] = d
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drop = map[uint64]bool{}
	for _, name := range rules.Drop {
		f.drop[node.MemberID(name)] = true
	}
	f.delay, f.disk = delays[0], delays[1]
}

// faultInjection mounts the fault endpoint and returns the faults to give
// the node.
func faultInjection(mux *http.ServeMux) node.Faults {
	f := &injectedFaults{drop: map[uint64]bool{}}
	mux.Handle("POST /debug/faults", f)
	return f
}
