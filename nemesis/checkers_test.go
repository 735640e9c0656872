package nemesis

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

const ms = time.Millisecond

// Every checker must be able to fail: each gets a history that breaks its
// rule and one that keeps it.
func TestCheckMutualExclusion(t *testing.T) {
	ok := []Hold{
		{Lock: "m", Lease: 1, Token: 3, Exclusive: true, Start: 0, End: 10 * ms},
		{Lock: "m", Lease: 2, Token: 5, Exclusive: true, Start: 11 * ms, End: 20 * ms},
		{Lock: "s", Lease: 1, Token: 3, Capacity: 2, Start: 0, End: 10 * ms},
		{Lock: "s", Lease: 2, Token: 4, Capacity: 2, Start: 1 * ms, End: 10 * ms},
	}
	if a := CheckMutualExclusion(ok); len(a) != 0 {
		t.Fatalf("anomalies in a correct history: %v", a)
	}
	bad := append(ok,
		Hold{Lock: "m", Lease: 3, Token: 7, Exclusive: true, Start: 15 * ms, End: 30 * ms},
		Hold{Lock: "s", Lease: 3, Token: 6, Capacity: 2, Start: 5 * ms, End: 6 * ms})
	if a := CheckMutualExclusion(bad); len(a) != 2 {
		t.Fatalf("want 2 anomalies (overlap, over capacity), got %v", a)
	}
}

func TestCheckTokens(t *testing.T) {
	hs := []Hold{
		{Lock: "m", Lease: 1, Token: 3, Exclusive: true, Start: 0},
		{Lock: "m", Lease: 1, Token: 3, Exclusive: true, Start: 1}, // re-acquire
		{Lock: "m", Lease: 2, Token: 9, Exclusive: true, Start: 2},
	}
	if a := CheckTokens(hs); len(a) != 0 {
		t.Fatalf("anomalies in a correct history: %v", a)
	}
	hs = append(hs, Hold{Lock: "m", Lease: 3, Token: 9, Exclusive: true, Start: 3})
	if a := CheckTokens(hs); len(a) != 1 {
		t.Fatalf("a reused token went unnoticed: %v", a)
	}
}

func TestCheckExpiries(t *testing.T) {
	es := []Expiry{{Lease: 1, TTL: time.Second, LastAckSent: time.Second, SeenGone: 2100 * ms}}
	if a := CheckExpiries(es, time.Second); len(a) != 0 {
		t.Fatalf("anomalies in a correct history: %v", a)
	}
	es = append(es, Expiry{Lease: 2, TTL: time.Second, LastAckSent: time.Second, SeenGone: 1900 * ms},
		Expiry{Lease: 3, TTL: time.Second, LastAckSent: time.Second, SeenGone: 9 * time.Second})
	if a := CheckExpiries(es, time.Second); len(a) != 2 {
		t.Fatalf("want an early and a late expiry, got %v", a)
	}
}

func TestCheckFIFO(t *testing.T) {
	evs := []QueueEvent{
		{Kind: "state", Queue: []uint64{1}},
		{Kind: "queued", Lease: 2},
		{Kind: "queued", Lease: 3},
		{Kind: "withdrawn", Lease: 2},
		{Kind: "granted", Lease: 1},
		{Kind: "granted", Lease: 3},
		{Kind: "granted", Lease: 4}, // a try on a lock nobody waits for
	}
	if a := CheckFIFO("m", evs); len(a) != 0 {
		t.Fatalf("anomalies in a correct history: %v", a)
	}
	evs = append(evs, QueueEvent{Kind: "queued", Lease: 5}, QueueEvent{Kind: "queued", Lease: 6}, QueueEvent{Kind: "granted", Lease: 6})
	if a := CheckFIFO("m", evs); len(a) != 1 {
		t.Fatalf("barging went unnoticed: %v", a)
	}
}

func op(client int, in MutexInput, out MutexOutput, call, ret int64) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret, Metadata: "m"}
}

func TestCheckLinearizable(t *testing.T) {
	good := []porcupine.Operation{
		op(0, MutexInput{Kind: Acquire, Lease: 1}, MutexOutput{Granted: true, Token: 3}, 0, 10),
		op(1, MutexInput{Kind: Acquire, Lease: 2}, MutexOutput{Granted: true, Token: 5}, 5, 40),
		op(0, MutexInput{Kind: Fence, Token: 3}, MutexOutput{OK: true}, 11, 12),
		op(0, MutexInput{Kind: Release, Lease: 1, Token: 3}, MutexOutput{OK: true}, 20, 30),
		op(2, MutexInput{Kind: Fence, Token: 3}, MutexOutput{OK: false}, 41, 42),
		op(3, MutexInput{Kind: Acquire, Lease: 4}, MutexOutput{Unknown: true}, 43, 1000),
		// A refusal while the lock looks free: another acquire may have held
		// it for a moment before its cancellation released it.
		op(2, MutexInput{Kind: Acquire, Lease: 3}, MutexOutput{Granted: false}, 44, 45),
		op(1, MutexInput{Kind: Release, Lease: 2, Token: 5}, MutexOutput{OK: true}, 50, 60),
	}
	if a, inc := CheckLinearizable(good, 10*time.Second); len(a) != 0 || inc {
		t.Fatalf("a linearizable history: %v (inconclusive %v)", a, inc)
	}
	for name, bad := range map[string][]porcupine.Operation{
		"two holders": {
			op(0, MutexInput{Kind: Acquire, Lease: 1}, MutexOutput{Granted: true, Token: 3}, 0, 10),
			op(1, MutexInput{Kind: Acquire, Lease: 2}, MutexOutput{Granted: true, Token: 5}, 11, 20),
		},
		"token goes back": {
			op(0, MutexInput{Kind: Acquire, Lease: 1}, MutexOutput{Granted: true, Token: 5}, 0, 10),
			op(0, MutexInput{Kind: Release, Lease: 1, Token: 5}, MutexOutput{OK: true}, 11, 12),
			op(1, MutexInput{Kind: Acquire, Lease: 2}, MutexOutput{Granted: true, Token: 4}, 13, 20),
		},
		"lost release": {
			op(0, MutexInput{Kind: Acquire, Lease: 1}, MutexOutput{Granted: true, Token: 5}, 0, 10),
			op(0, MutexInput{Kind: Release, Lease: 1, Token: 5}, MutexOutput{OK: true}, 11, 12),
			op(1, MutexInput{Kind: Fence, Token: 5}, MutexOutput{OK: true}, 13, 20),
		},
	} {
		if a, _ := CheckLinearizable(bad, 10*time.Second); len(a) != 1 {
			t.Errorf("%s: not caught", name)
		}
	}
}
