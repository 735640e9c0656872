package nemesis

import (
	"fmt"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// OpKind is what a client did to a mutex.
type OpKind int

// The operations of the mutex model.
const (
	// Acquire: a blocking, timed or try acquire. Output: Granted, Token.
	Acquire OpKind = iota
	// Release of Token. Output: OK (false: not the holder).
	Release
	// Fence: CheckFence(Token). Output: Valid.
	Fence
	// End: the lease ended, by revoke or expiry. It frees what it held.
	End
)

// MutexInput is one call on a mutex.
type MutexInput struct {
	Kind  OpKind
	Lease uint64
	Token uint64 // Release, Fence
}

// MutexOutput is what the call returned. Unknown: the call failed without a
// definite answer, so it may or may not have taken effect (its return time
// is then the end of the history).
type MutexOutput struct {
	Unknown bool
	Granted bool
	Token   uint64
	OK      bool
}

// mutexState is the model's state of one mutex. A grant whose token the
// history does not show (an acquire with an unknown outcome) has Token 0.
type mutexState struct {
	Holder uint64
	Token  uint64
	Max    uint64 // the highest token granted; new grants must exceed it
}

// MutexModel is the sequential specification of a lockd mutex with fencing
// tokens: one holder at a time, tokens strictly increasing from grant to
// grant, a release only by the holder with its token, CheckFence true exactly
// for the holder's token, and a lease's end freeing what it holds. Histories
// are partitioned by lock (Operation.Metadata holds the lock name).
var MutexModel = porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byLock := map[string][]porcupine.Operation{}
		var order []string
		for _, op := range history {
			name := op.Metadata.(string)
			if _, ok := byLock[name]; !ok {
				order = append(order, name)
			}
			byLock[name] = append(byLock[name], op)
		}
		var out [][]porcupine.Operation
		for _, n := range order {
			out = append(out, byLock[n])
		}
		return out
	},
	Init: func() []any { return []any{mutexState{}} },
	Step: func(state, input, output any) []any {
		s, in, out := state.(mutexState), input.(MutexInput), output.(MutexOutput)
		free := mutexState{Max: s.Max}
		switch in.Kind {
		case Acquire:
			if out.Unknown {
				next := []any{s}
				if s.Holder == 0 {
					next = append(next, mutexState{Holder: in.Lease, Max: s.Max})
				}
				return next
			}
			if !out.Granted {
				// Refused (a try, or a wait that ran out). Usually someone
				// else holds the lock, but not always in this model's
				// terms: another acquire that was cancelled after its
				// outcome could not be learned may have held it for a moment
				// (granted, then released by the cancellation) without any
				// client being told. A refusal therefore constrains nothing;
				// the grants, releases and fences carry the check.
				return []any{s}
			}
			switch {
			case s.Holder == 0 && out.Token > s.Max:
				return []any{mutexState{Holder: in.Lease, Token: out.Token, Max: out.Token}}
			case s.Holder == in.Lease && (s.Token == out.Token || s.Token == 0):
				return []any{mutexState{Holder: in.Lease, Token: out.Token, Max: max(s.Max, out.Token)}} // re-acquire
			}
			return nil
		case Release:
			holds := s.Holder == in.Lease && (s.Token == in.Token || s.Token == 0)
			switch {
			case out.Unknown && holds:
				return []any{s, free}
			case out.Unknown:
				return []any{s}
			case out.OK && holds:
				return []any{free}
			case !out.OK && !holds:
				return []any{s}
			}
			return nil
		case Fence:
			if out.Unknown {
				return []any{s}
			}
			switch {
			case s.Holder != 0 && s.Token == in.Token:
				if out.OK {
					return []any{s}
				}
			case s.Holder != 0 && s.Token == 0:
				// The holder's token is unknown: either answer fits.
				if out.OK {
					return []any{mutexState{Holder: s.Holder, Token: in.Token, Max: max(s.Max, in.Token)}}
				}
				return []any{s}
			default:
				if !out.OK {
					return []any{s}
				}
			}
			return nil
		case End:
			if s.Holder != in.Lease {
				return []any{s}
			}
			if out.Unknown {
				return []any{s, free}
			}
			return []any{free}
		}
		return nil
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(MutexInput), output.(MutexOutput)
		res := fmt.Sprintf("%+v", out)
		return fmt.Sprintf("%v(lease %d, token %d) -> %s", [...]string{"acquire", "release", "fence", "end"}[in.Kind], in.Lease, in.Token, res)
	},
}

// CheckLinearizable checks a mutex history against MutexModel, each lock's
// on its own (as many at a time as there are CPUs, each within timeout). It
// reports, per lock, an anomaly if its history is not linearizable, and
// whether the check ran out of time for some lock (inconclusive).
//
// porcupine's search keeps every state it has visited, so a hard history
// (long, with many operations of unknown outcome) grows its memory for as
// long as it runs: a 24-minute soak once had all its locks' searches take
// 24 GiB between them in three minutes. Hence the bounded parallelism, and
// callers should keep timeout to minutes.
func CheckLinearizable(ops []porcupine.Operation, timeout time.Duration) (anomalies []string, inconclusive bool) {
	parts := MutexModel.Partition(ops)
	model := MutexModel.ToModel()
	results := make([]porcupine.CheckResult, len(parts))
	var wg sync.WaitGroup
	slots := make(chan struct{}, runtime.NumCPU())
	for i, part := range parts {
		wg.Go(func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			results[i] = porcupine.CheckOperationsTimeout(model, part, timeout)
		})
	}
	wg.Wait()
	for i, res := range results {
		switch res {
		case porcupine.Illegal:
			anomalies = append(anomalies, fmt.Sprintf("%s: the history of its %d mutex operations is not linearizable", parts[i][0].Metadata, len(parts[i])))
		case porcupine.Unknown:
			inconclusive = true
		}
	}
	sort.Strings(anomalies)
	return anomalies, inconclusive
}
