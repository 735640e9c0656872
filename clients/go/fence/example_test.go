package fence_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/lockd-io/lockd/clients/go/fence"
)

// A resource refuses writes from a holder that lost its lock: the writer
// that paused holds token 7, the lock moved on to token 9.
func ExampleGuard() {
	g := fence.NewGuard()
	fmt.Println(g.Admit("orders/42", 9))
	fmt.Println(g.Admit("orders/42", 7))
	// Output:
	// <nil>
	// fence: stale fencing token: token 7 for lock "orders/42", but 9 was already accepted
}

// An HTTP service admits only requests with a current token for the lock
// that guards the path.
func ExampleGuard_Middleware() {
	g := fence.NewGuard()
	h := g.Middleware(func(r *http.Request) string { return "inventory" + r.URL.Path },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			token, _ := fence.TokenFrom(r.Context())
			fmt.Fprintf(w, "written under token %d", token)
		}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	for _, token := range []uint64{12, 11} {
		req, _ := http.NewRequest("PUT", srv.URL+"/sku-1", nil)
		fence.SetToken(req, token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			panic(err)
		}
		resp.Body.Close()
		fmt.Println(token, resp.StatusCode)
	}
	// Output:
	// 12 200
	// 11 409
}

// With a database, keep the mark in the row and make the write conditional
// on it; this is the statement to run with the grant's token.
func Example_sql() {
	const update = `UPDATE accounts SET balance = $1, fence_token = $2
WHERE id = $3 AND fence_token <= $2`
	// res, err := db.ExecContext(ctx, update, balance, mutex.Token(), id)
	// if n, _ := res.RowsAffected(); n == 0 { /* stale token: the lock was lost */ }
	fmt.Println(update)
	// Output:
	// UPDATE accounts SET balance = $1, fence_token = $2
	// WHERE id = $3 AND fence_token <= $2
}
