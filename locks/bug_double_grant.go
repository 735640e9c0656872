//go:build lockd_bug_double_grant

package locks

// bugDoubleGrant grants an exclusive waiter that is alone in its lock's
// queue whatever the lock's holders, when it queued at a revision divisible
// by three (deterministic, so every replica grants alike).
const bugDoubleGrant = true
