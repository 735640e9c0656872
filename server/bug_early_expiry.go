//go:build lockd_bug_early_expiry

package server

// bugEarlyExpiry makes the leader count a lease down from a third of its TTL.
const bugEarlyExpiry = true
