//go:build lockd_bug_early_expiry

package server

// bugEarlyExpiry makes the leader count a lease down from a quarter of its
// TTL: below the SDK's keep-alive cadence (TTL/3), so that a run's live
// leases expire early for sure, not only when a keep-alive is late.
const bugEarlyExpiry = true
