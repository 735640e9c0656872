//go:build !lockd_bug_barging && !lockd_bug_token_reuse

package locks

// Deliberate defects, for tests that show their checkers catch a broken
// build (see the nemesis package). Normal builds have none.
const (
	bugBarging    = false
	bugTokenReuse = false
)
