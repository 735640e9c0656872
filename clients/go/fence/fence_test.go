package fence_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/lockd-io/lockd/clients/go/fence"
)

func TestGuardAdmitsOnlyNewer(t *testing.T) {
	g := fence.NewGuard()
	for _, step := range []struct {
		lock  string
		token uint64
		ok    bool
	}{
		{"a", 5, true},
		{"a", 5, true}, // the same holder again
		{"a", 4, false},
		{"a", 9, true},
		{"a", 5, false},
		{"b", 1, true}, // per lock
		{"b", 0, false},
	} {
		err := g.Admit(step.lock, step.token)
		if (err == nil) != step.ok || (err != nil && !errors.Is(err, fence.ErrStale)) {
			t.Fatalf("Admit(%s, %d) = %v, want ok=%v", step.lock, step.token, err, step.ok)
		}
	}
	if h := g.Highest("a"); h != 9 {
		t.Fatalf("Highest = %d", h)
	}
}

func TestGuardConcurrent(t *testing.T) {
	g := fence.NewGuard()
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Add(1)
		go func() { defer wg.Done(); g.Admit("x", uint64(i+1)) }()
	}
	wg.Wait()
	if g.Highest("x") != 100 {
		t.Fatalf("Highest = %d, want 100", g.Highest("x"))
	}
}

func TestMiddleware(t *testing.T) {
	g := fence.NewGuard()
	h := g.Middleware(func(r *http.Request) string { return "orders" }, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, _ := fence.TokenFrom(r.Context())
		fmt.Fprint(w, tok)
	}))
	do := func(token string) int {
		r := httptest.NewRequest("POST", "/", nil)
		if token != "" {
			r.Header.Set(fence.Header, token)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	for _, c := range []struct {
		token string
		want  int
	}{
		{"", http.StatusPreconditionRequired},
		{"x", http.StatusBadRequest},
		{"7", http.StatusOK},
		{"6", http.StatusConflict},
		{"8", http.StatusOK},
	} {
		if got := do(c.token); got != c.want {
			t.Fatalf("token %q: %d, want %d", c.token, got, c.want)
		}
	}
}
