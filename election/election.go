// Package election expresses leader elections as lock-table operations. An
// election named E is the lock "election/E" with capacity 1: campaigning
// queues for it in FIFO order, the leader is its holder, the term is the
// holder's fencing token, and the leader's value is the grant's value.
// Resigning releases the lock, which grants it at once to the next
// candidate, so a handover costs one raft commit and no TTL.
//
// The package is pure: it builds commands and interprets reads; the server
// proposes and serves them.
package election

import (
	"errors"

	"github.com/lockd-io/lockd/locks"
	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
)

// Namespace is the lock namespace elections live in.
const Namespace = "election"

// ErrNotCandidate is returned by Resign when the lease neither leads nor
// campaigns in the election.
var ErrNotCandidate = errors.New("the lease neither leads nor campaigns in this election")

// LockName is the lock that carries election name.
func LockName(name string) string { return Namespace + "/" + name }

// ValidateName checks an election name; it follows the lock name rules,
// counting the namespace prefix.
func ValidateName(name string) error {
	return locks.ValidateName(LockName(name))
}

// Campaign is the command that queues lease for leadership of name.
func Campaign(name string, leaseID, requestID uint64, value []byte) *statev1.Acquire {
	return &statev1.Acquire{
		Names:     []string{LockName(name)},
		LeaseId:   leaseID,
		RequestId: requestID,
		Mode:      int32(locks.ModeExclusive),
		Capacity:  1,
		Value:     value,
	}
}

// Proclaim is the command that changes the leader's value, only while term
// is current.
func Proclaim(name string, leaseID, term uint64, value []byte) *statev1.SetValue {
	return &statev1.SetValue{Name: LockName(name), LeaseId: leaseID, Token: term, Value: value}
}

// Leader is who leads an election.
type Leader struct {
	LeaseID uint64
	Term    uint64
	Value   []byte
	Owner   string
}

// LeaderOf reads the leader from the election lock's state; ok is false
// when nobody leads.
func LeaderOf(info locks.LockInfo) (Leader, bool) {
	if len(info.Holders) == 0 {
		return Leader{}, false
	}
	h := info.Holders[0]
	return Leader{LeaseID: h.LeaseID, Term: h.Token, Value: h.Value, Owner: h.Owner}, true
}

// Resign is the command that ends lease's part in the election: it releases
// the leadership if the lease leads (in term, when term is not 0), or
// withdraws its candidacy if it waits.
func Resign(info locks.LockInfo, leaseID, term uint64) (*statev1.Command, error) {
	for _, h := range info.Holders {
		if h.LeaseID == leaseID {
			return &statev1.Command{Op: &statev1.Command_Release{Release: &statev1.Release{Name: info.Name, LeaseId: leaseID, Token: term}}}, nil
		}
	}
	if term == 0 {
		for _, w := range info.Waiters {
			if w.LeaseID == leaseID {
				return &statev1.Command{Op: &statev1.Command_Cancel{Cancel: &statev1.Cancel{LeaseId: leaseID, WaiterId: w.ID}}}, nil
			}
		}
	}
	return nil, ErrNotCandidate
}
