package locks

import "fmt"

// Code classifies the errors a command can fail with. The server maps each
// to one Connect code.
type Code int32

// The codes. Their values are replicated inside de-duplicated results, so
// they never change.
const (
	OK Code = iota
	// Invalid: a malformed request (name, TTL, size, mode).
	Invalid
	// NotFound: the lease does not exist (never did, or ended).
	NotFound
	// NotHolder: the lease does not hold the lock, or the token is stale.
	NotHolder
	// Conflict: the request contradicts the lock's state (capacity, a
	// partly held multi-lock, another wait on the same lock).
	Conflict
	// Quota: a limit on leases, waiters or grants was reached.
	Quota
	// Aborted: the request was cancelled by its request id (its caller gave
	// up, or the server could not learn its outcome); retry with a new one.
	Aborted
	// Denied: the command names a lease of another principal.
	Denied
)

func (c Code) String() string {
	switch c {
	case OK:
		return "ok"
	case Invalid:
		return "invalid"
	case NotFound:
		return "not found"
	case NotHolder:
		return "not holder"
	case Conflict:
		return "conflict"
	case Quota:
		return "quota"
	case Aborted:
		return "aborted"
	case Denied:
		return "denied"
	default:
		return fmt.Sprintf("code(%d)", int32(c))
	}
}

// Error is a command's failure. A failed command changes nothing.
type Error struct {
	Code Code
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

func errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}
