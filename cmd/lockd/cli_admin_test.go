package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// sdkSession opens an SDK session against addr, closed when the test ends.
func sdkSession(t *testing.T, addr, owner string) *lockd.Session {
	t.Helper()
	c, err := lockd.New([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.NewSession(ctx, lockd.WithTTL(10*time.Second), lockd.WithOwner(owner))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// listRows parses the text of `lockd locks list`: the header's columns, then
// one row of fields per lock.
func listRows(t *testing.T, out string) [][]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 || strings.Join(strings.Fields(lines[0]), " ") != "LOCK HOLDERS TOKENS WAITERS DELAYED UNTIL" {
		t.Fatalf("locks list printed no header:\n%s", out)
	}
	var rows [][]string
	for _, l := range lines[1:] {
		rows = append(rows, strings.Fields(l))
	}
	return rows
}

// `lockd locks list [PREFIX]` shows the locks under the prefix (all without
// one), each with its holders out of its capacity, their tokens and its
// waiters; --output json prints the ListResponse.
func TestCLILocksList(t *testing.T) {
	_, addr := startOne(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	one, two, three := sdkSession(t, addr, "one"), sdkSession(t, addr, "two"), sdkSession(t, addr, "three")
	a, b, other := lockd.NewMutex(one, "jobs/a"), lockd.NewMutex(two, "jobs/b"), lockd.NewMutex(one, "other/c")
	for _, m := range []*lockd.Mutex{a, b, other} {
		if err := m.Lock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	go lockd.NewMutex(three, "jobs/b").Lock(ctx) // a waiter; ends with the test's ctx
	eventually(t, 10*time.Second, "a waiter on jobs/b", func() error {
		d, err := one.Client().Describe(ctx, "jobs/b")
		if err != nil || len(d.GetWaiters()) != 1 {
			return fmt.Errorf("%v %v", d, err)
		}
		return nil
	})
	tok := func(m *lockd.Mutex) string { return strconv.FormatUint(m.Token(), 10) }

	// Text, under a prefix.
	code, out, stderr := cliIn(t, t.TempDir(), addr, "locks", "list", "jobs/")
	if code != 0 {
		t.Fatalf("locks list jobs/: exit %d: %s", code, stderr)
	}
	want := [][]string{{"jobs/a", "1/1", tok(a), "0", "-"}, {"jobs/b", "1/1", tok(b), "1", "-"}}
	if rows := listRows(t, out); fmt.Sprint(rows) != fmt.Sprint(want) {
		t.Fatalf("locks list jobs/ rows %v, want %v:\n%s", rows, want, out)
	}

	// JSON, under a prefix, flags after the arguments.
	code, out, stderr = cliIn(t, t.TempDir(), addr, "locks", "list", "jobs/", "--output", "json")
	if code != 0 {
		t.Fatalf("locks list jobs/ --output json: exit %d: %s", code, stderr)
	}
	var list lockdv1.ListResponse
	if err := protojson.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("locks list --output json printed %q: %v", out, err)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil || raw["locks"] == nil {
		t.Fatalf("locks list --output json is not a JSON object with locks: %q %v", out, err)
	}
	if len(list.GetLocks()) != 2 {
		t.Fatalf("locks list jobs/ --output json: %d locks, want 2: %s", len(list.GetLocks()), out)
	}
	la, lb := list.GetLocks()[0], list.GetLocks()[1]
	if la.GetName() != "jobs/a" || len(la.GetHolders()) != 1 || la.GetHolders()[0].GetLeaseId() != one.ID() || la.GetHolders()[0].GetToken() != a.Token() || len(la.GetWaiters()) != 0 {
		t.Fatalf("jobs/a in the JSON list: %v", la)
	}
	if lb.GetName() != "jobs/b" || len(lb.GetHolders()) != 1 || lb.GetHolders()[0].GetLeaseId() != two.ID() || lb.GetHolders()[0].GetToken() != b.Token() ||
		len(lb.GetWaiters()) != 1 || lb.GetWaiters()[0].GetLeaseId() != three.ID() {
		t.Fatalf("jobs/b in the JSON list: %v", lb)
	}

	// Without a prefix: every lock.
	code, out, stderr = cliIn(t, t.TempDir(), addr, "locks", "list")
	if code != 0 {
		t.Fatalf("locks list: exit %d: %s", code, stderr)
	}
	var names []string
	for _, r := range listRows(t, out) {
		names = append(names, r[0])
	}
	if !slices.Equal(names, []string{"jobs/a", "jobs/b", "other/c"}) {
		t.Fatalf("locks list names %v, want jobs/a jobs/b other/c:\n%s", names, out)
	}

	// A prefix nothing is under: the header alone, or no locks in JSON.
	if code, out, stderr := cliIn(t, t.TempDir(), addr, "locks", "list", "nothing/"); code != 0 || len(listRows(t, out)) != 0 {
		t.Fatalf("locks list nothing/: exit %d: %s%s", code, out, stderr)
	}
	code, out, _ = cliIn(t, t.TempDir(), addr, "locks", "list", "nothing/", "--output", "json")
	if err := protojson.Unmarshal([]byte(out), &list); code != 0 || err != nil || len(list.GetLocks()) != 0 {
		t.Fatalf("locks list nothing/ --output json: exit %d, %q, %v", code, out, err)
	}
	if code, _, _ := cliIn(t, t.TempDir(), addr, "locks", "list", "a/", "b/"); code != exitUsage {
		t.Fatalf("locks list with two prefixes: exit %d, want %d", code, exitUsage)
	}
}

// `lockd lease revoke ID` ends the lease: it is no longer listed, its locks
// are free, and its holder learns it. An unknown lease is a clear error and
// a non-zero exit.
func TestCLILeaseRevoke(t *testing.T) {
	_, addr := startOne(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	victim, bystander := sdkSession(t, addr, "victim"), sdkSession(t, addr, "bystander")
	m := lockd.NewMutex(victim, "jobs/revoked")
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	leaseIDs := func() []uint64 {
		t.Helper()
		code, out, stderr := cliIn(t, t.TempDir(), addr, "lease", "list", "--output", "json")
		var list lockdv1.ListLeasesResponse
		if err := protojson.Unmarshal([]byte(out), &list); code != 0 || err != nil {
			t.Fatalf("lease list: exit %d, %q, %v: %s", code, out, err, stderr)
		}
		var ids []uint64
		for _, l := range list.GetLeases() {
			ids = append(ids, l.GetId())
		}
		return ids
	}
	if ids := leaseIDs(); !slices.Contains(ids, victim.ID()) {
		t.Fatalf("lease list %v lacks the victim %d", ids, victim.ID())
	}
	id := strconv.FormatUint(victim.ID(), 10)
	code, out, stderr := cliIn(t, t.TempDir(), addr, "lease", "revoke", id)
	if code != 0 || strings.TrimSpace(out) != "revoked lease "+id {
		t.Fatalf("lease revoke %s: exit %d, %q: %s", id, code, out, stderr)
	}
	if ids := leaseIDs(); slices.Contains(ids, victim.ID()) || !slices.Contains(ids, bystander.ID()) {
		t.Fatalf("after revoking %d, lease list shows %v (the bystander is %d)", victim.ID(), ids, bystander.ID())
	}
	d, err := bystander.Client().Describe(ctx, "jobs/revoked")
	if err != nil {
		t.Fatal(err)
	}
	if len(d.GetHolders()) != 0 {
		t.Fatalf("the revoked lease's lock is still held: %v", d.GetHolders())
	}
	select {
	case <-m.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the revoked lease's holder was not told its lock was lost")
	}
	if ok, err := lockd.NewMutex(bystander, "jobs/revoked").TryLock(ctx); !ok || err != nil {
		t.Fatalf("the revoked lease's lock could not be taken: %v %v", ok, err)
	}

	// JSON output.
	code, out, stderr = cliIn(t, t.TempDir(), addr, "lease", "revoke", strconv.FormatUint(bystander.ID(), 10), "--output", "json")
	var res map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || res["revoked"] != strconv.FormatUint(bystander.ID(), 10) {
		t.Fatalf("lease revoke --output json: exit %d, %q: %s", code, out, stderr)
	}

	// Again, and an id that never was: not found.
	for _, unknown := range []string{id, "999999"} {
		code, out, stderr = cliIn(t, t.TempDir(), addr, "lease", "revoke", unknown)
		if code != exitError || out != "" || !strings.Contains(stderr, "not_found") || !strings.Contains(stderr, "lease "+unknown+" not found") {
			t.Fatalf("lease revoke %s (unknown): exit %d, stdout %q, stderr %q; want exit %d and a not-found error naming the lease", unknown, code, out, stderr, exitError)
		}
	}
	for _, bad := range []string{"abc", "0", "1.5"} {
		if code, _, stderr := cliIn(t, t.TempDir(), addr, "lease", "revoke", bad); code != exitUsage || !strings.Contains(stderr, "not a positive number") {
			t.Fatalf("lease revoke %q: exit %d, %q; want %d", bad, code, stderr, exitUsage)
		}
	}
}
