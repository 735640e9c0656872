//go:build lockd_faults

package main

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/lockd-io/lockd/node"
)

// injectedFaults lets a test cut and slow this node's outgoing peer links
// at run time, through POST /debug/faults. It exists only in binaries built
// with -tags lockd_faults, which the fault-injection (nemesis) tests build.
type injectedFaults struct {
	mu    sync.Mutex
	drop  map[uint64]bool
	delay time.Duration
}

// faultRules is the body of POST /debug/faults: the peers this node stops
// sending to, by name, and a delay on every outgoing batch.
type faultRules struct {
	Drop  []string `json:"drop"`
	Delay string   `json:"delay"`
}

func (f *injectedFaults) Outbound(from, to uint64) (bool, time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.drop[to], f.delay
}

func (f *injectedFaults) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var rules faultRules
	if err := json.NewDecoder(r.Body).Decode(&rules); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	delay, _ := time.ParseDuration(rules.Delay)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drop = map[uint64]bool{}
	for _, name := range rules.Drop {
		f.drop[node.MemberID(name)] = true
	}
	f.delay = delay
}

// faultInjection mounts the fault endpoint and returns the faults to give
// the node.
func faultInjection(mux *http.ServeMux) node.Faults {
	f := &injectedFaults{drop: map[uint64]bool{}}
	mux.Handle("POST /debug/faults", f)
	return f
}
