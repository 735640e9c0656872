//go:build !lockd_bug_double_grant

package locks

// bugDoubleGrant is a deliberate defect for tests that show their checkers
// catch a broken build (see the nemesis package). Normal builds have none.
const bugDoubleGrant = false
