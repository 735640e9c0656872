//go:build lockd_bug_barging

package locks

// bugBarging grants a freed lock to its newest waiter instead of its oldest.
const (
	bugBarging    = true
	bugTokenReuse = false
)
