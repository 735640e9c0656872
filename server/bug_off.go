//go:build !lockd_bug_early_expiry

package server

// bugEarlyExpiry is a deliberate defect for tests that show their checkers
// catch a broken build (see the nemesis package). Normal builds have none.
const bugEarlyExpiry = false
