package server

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"

	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"google.golang.org/protobuf/reflect/protoreflect"
)

func TestParseTokens(t *testing.T) {
	sum := sha256.Sum256([]byte("hashed-secret-0123"))
	tokens, err := ParseTokens(strings.NewReader(`
# comment
billing client billing/,jobs/ plain-secret-0123456
ops     admin  *              sha256:` + hex.EncodeToString(sum[:]) + `
`))
	if err != nil {
		t.Fatal(err)
	}
	p, ok := tokens.Lookup("plain-secret-0123456")
	if !ok || p.Name != "billing" || p.Role != RoleClient || len(p.Prefixes) != 2 {
		t.Fatalf("billing: %+v %v", p, ok)
	}
	if !p.mayName("jobs/x") || p.mayName("job") || p.mayName("other/jobs/x") {
		t.Fatal("billing's prefixes match the wrong names")
	}
	if !p.mayName("billing/eu/") || p.mayName("") || p.mayName("bill") {
		t.Fatal("billing's prefixes cover the wrong prefixes")
	}
	q, ok := tokens.Lookup("hashed-secret-0123")
	if !ok || q.Name != "ops" || q.Role != RoleAdmin || q.Prefixes != nil || !q.mayName("") {
		t.Fatalf("ops: %+v %v", q, ok)
	}
	for _, bad := range []string{"", "plain-secret-0123457", "sha256:" + hex.EncodeToString(sum[:])} {
		if _, ok := tokens.Lookup(bad); ok {
			t.Fatalf("token %q accepted", bad)
		}
	}
}

// No header, or an empty token, is never a token, even beside a hash of
// the empty string.
func TestEmptyTokenIsNone(t *testing.T) {
	empty := sha256.Sum256(nil)
	tokens, err := ParseTokens(strings.NewReader("e admin * sha256:" + hex.EncodeToString(empty[:])))
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := tokens.Lookup(""); ok {
		t.Fatalf("the empty token is %+v", p)
	}
	for _, h := range []string{"", "Bearer ", "Bearer", "Basic abc"} {
		if tok, ok := BearerToken(http.Header{"Authorization": {h}}); ok {
			t.Errorf("header %q gave token %q", h, tok)
		}
	}
}

func TestParseTokensRefusesBadFiles(t *testing.T) {
	for name, text := range map[string]string{
		"empty":           "# nothing\n",
		"missing field":   "a client *\n",
		"extra field":     "a client * secret-0123456789abcdef more\n",
		"unknown role":    "a root * secret-0123456789abcdef\n",
		"empty prefix":    "a client x/,,y/ secret-0123456789abcdef\n",
		"star in a list":  "a client x/,* secret-0123456789abcdef\n",
		"short secret":    "a client * short\n",
		"bad hash":        "a client * sha256:abcd\n",
		"duplicate name":  "a client * secret-0123456789abcdef\na admin * secret-0123456789abcdeg\n",
		"duplicate token": "a client * secret-0123456789abcdef\nb admin * secret-0123456789abcdef\n",
		"long name":       strings.Repeat("n", maxTokenNameBytes+1) + " client * secret-0123456789abcdef\n",
	} {
		if _, err := ParseTokens(strings.NewReader(text)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if name != "empty" && !strings.Contains(err.Error(), "line ") {
			t.Errorf("%s: %v does not name the line", name, err)
		}
	}
}

// Every procedure of the API has an access rule: one without is refused
// to everybody, which a new RPC must not be by accident.
func TestEveryProcedureHasARule(t *testing.T) {
	files := []protoreflect.FileDescriptor{lockdv1.File_lockd_v1_cluster_proto, lockdv1.File_lockd_v1_lease_proto,
		lockdv1.File_lockd_v1_lock_proto, lockdv1.File_lockd_v1_election_proto}
	n := 0
	for _, f := range files {
		for i := range f.Services().Len() {
			svc := f.Services().Get(i)
			for j := range svc.Methods().Len() {
				proc := "/" + string(svc.FullName()) + "/" + string(svc.Methods().Get(j).Name())
				if _, ok := rules[proc]; !ok {
					t.Errorf("%s has no access rule", proc)
				}
				n++
			}
		}
	}
	if n != len(rules) {
		t.Errorf("%d procedures, %d rules", n, len(rules))
	}
}
