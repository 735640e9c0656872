// Package nemesis checks histories recorded while lockd clusters run under
// injected faults: the checkers and the linearizability model live here,
// the harness that drives real clusters (processes killed, paused and
// partitioned while clients lock, release, campaign and abandon leases) is
// in this package's tests.
//
// Each checker returns one line per anomaly, and each is shown to fail on a
// history that breaks its rule (checkers_test.go) and on a deliberately
// broken lockd build (nemesis_test.go).
package nemesis
