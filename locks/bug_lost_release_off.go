//go:build !lockd_bug_lost_release

package locks

// bugLostRelease is a deliberate defect for tests that show their checkers
// catch a broken build (see the nemesis package). Normal builds have none.
const bugLostRelease = false
