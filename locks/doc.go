// Package locks is lockd's replicated state machine: leases, the lock table
// with its fair FIFO queues, fencing tokens, lock-delays, request
// de-duplication, and snapshots of all of it.
//
// A Table changes only by applying commands from the raft log, and applying
// is deterministic: no clock, no randomness, no I/O, no goroutines. Every
// node that applies the same log holds the same table. Time enters only as
// data inside commands (the proposer's wall clock, used for display), and
// decisions that depend on time (lease expiry, the end of a lock-delay) are
// taken by the raft leader and arrive here as commands. The Deadlines type
// is the leader's pure bookkeeping for those decisions; it takes the time
// as an argument.
//
// # Semantics
//
//   - The revision counts applied mutations. Each grant gets a revision of
//     its own, its fencing token, so the tokens of one lock strictly
//     increase, across leaders, restarts and snapshots.
//   - A lock has a capacity (1 = mutex) and holders in exclusive or shared
//     mode; an exclusive holder is alone, shared holders coexist up to the
//     capacity. Waiters queue in revision order and a grant never overtakes
//     an earlier waiter; consecutive shared waiters at the head are granted
//     together.
//   - An acquire of several locks waits in every queue at once and is
//     granted all of them in one step, or none. Since every queue is ordered
//     by the same revisions, the oldest waiter is first in all its queues,
//     so multi-lock waiters cannot deadlock each other.
//   - Acquiring a lock the lease already holds returns the existing grant
//     and token (no hold count); acquiring one it already waits for returns
//     the existing waiter. A request id makes any retried mutation return the
//     first result.
//   - When a lease ends, by revoke or expiry, its grants are released and its
//     waiters withdrawn. A lock freed by an expiry (or a force release) with
//     a lock-delay grants nobody until the leader ends the delay.
package locks
