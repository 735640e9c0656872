// Package fence protects a resource with lockd's fencing tokens.
//
// A lock alone cannot keep two clients out of a resource: a holder can pause
// (GC, a stopped VM, a slow network) past its lease, lose the lock, and then
// write as if it still held it. Each grant's fencing token strictly
// increases per lock, so the resource can refuse a write that carries a token
// older than one it has already seen. Guard keeps that high-water mark per
// lock, in memory, and Middleware applies it to HTTP requests that carry the
// token in the Lockd-Fencing-Token header.
//
// A Guard forgets its marks when the process restarts. A resource with a
// database should keep the mark with the data instead, and make the write
// conditional on it, for example:
//
//	UPDATE accounts SET balance = $1, fence_token = $2
//	WHERE id = $3 AND fence_token <= $2
//
// and treat "no row updated" as a stale token.
package fence

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
)

// Header carries a fencing token on an HTTP request.
const Header = "Lockd-Fencing-Token"

// ErrStale is returned for a token older than one the resource has already accepted
// for the same lock; its holder has lost the lock.
var ErrStale = errors.New("fence: stale fencing token")

// Guard admits tokens that are at least as new as the newest it has seen per
// lock. It is safe for concurrent use.
type Guard struct {
	mu      sync.Mutex
	highest map[string]uint64
}

// NewGuard returns a Guard that has seen nothing.
func NewGuard() *Guard { return &Guard{highest: map[string]uint64{}} }

// Admit accepts token for lock if no newer token was admitted for it, and
// remembers it; otherwise it returns an error wrapping ErrStale. The same
// token is admitted again (the same holder writing twice).
func (g *Guard) Admit(lock string, token uint64) error {
	if token == 0 {
		return fmt.Errorf("%w: token 0 is never granted", ErrStale)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if h := g.highest[lock]; token < h {
		return fmt.Errorf("%w: token %d for lock %q, but %d was already accepted", ErrStale, token, lock, h)
	}
	g.highest[lock] = token
	return nil
}

// Highest is the newest token admitted for lock, 0 if none.
func (g *Guard) Highest(lock string) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.highest[lock]
}

type tokenKey struct{}

// Middleware admits a request only if it carries, in the Lockd-Fencing-Token
// header, a token for the lock lockOf names that the guard admits. A request
// without a token is answered 428 Precondition Required; a stale one, 409
// Conflict. The handler finds the token with TokenFrom.
func (g *Guard) Middleware(lockOf func(*http.Request) string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw := r.Header.Get(Header)
		if raw == "" {
			http.Error(w, "missing "+Header+" header", http.StatusPreconditionRequired)
			return
		}
		token, err := strconv.ParseUint(raw, 10, 64)
		if err != nil {
			http.Error(w, "bad "+Header+" header: "+raw, http.StatusBadRequest)
			return
		}
		if err := g.Admit(lockOf(r), token); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tokenKey{}, token)))
	})
}

// TokenFrom returns the token Middleware admitted for the request.
func TokenFrom(ctx context.Context) (uint64, bool) {
	t, ok := ctx.Value(tokenKey{}).(uint64)
	return t, ok
}

// SetToken puts a fencing token on an outgoing request.
func SetToken(r *http.Request, token uint64) {
	r.Header.Set(Header, strconv.FormatUint(token, 10))
}
