//go:build lockd_bug_token_reuse

package locks

// bugTokenReuse grants with the lease id as the token, so tokens repeat and
// go backwards.
const (
	bugBarging    = false
	bugTokenReuse = true
)
