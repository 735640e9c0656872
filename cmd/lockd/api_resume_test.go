package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
)

// leaderText is an observation as the tests compare it.
func leaderText(o *lockdv1.LeaderResponse) string {
	if o.GetLeader() == nil {
		return "none"
	}
	return fmt.Sprintf("%d/%d/%s", o.GetLeader().GetLeaseId(), o.GetLeader().GetTerm(), o.GetLeader().GetValue())
}

// observer receives an Observe stream in the background, so a test can wait
// for a message with a timeout.
type observer struct {
	t      *testing.T
	cancel context.CancelFunc
	c      chan *lockdv1.LeaderResponse
}

func observe(t *testing.T, c clients, name string, after uint64) *observer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := c.election.Observe(ctx, connect.NewRequest(&lockdv1.ObserveRequest{Name: name, AfterRevision: after}))
	if err != nil {
		cancel()
		t.Fatalf("observe %s after %d: %v", name, after, err)
	}
	o := &observer{t: t, cancel: cancel, c: make(chan *lockdv1.LeaderResponse, 100)}
	go func() {
		defer close(o.c)
		for stream.Receive() {
			o.c <- stream.Msg()
		}
	}()
	t.Cleanup(o.close)
	return o
}

func (o *observer) close() { o.cancel() }

func (o *observer) next() *lockdv1.LeaderResponse {
	o.t.Helper()
	select {
	case m, ok := <-o.c:
		if !ok {
			o.t.Fatal("the observation ended")
		}
		return m
	case <-time.After(5 * time.Second):
		o.t.Fatal("no observation within 5s")
		return nil
	}
}

// Observe resumed with the revision of the last observation a client saw
// gets exactly the changes of leader and value after it: each once, in
// order, with the revision at which it happened, nothing from before.
func TestAPIObserveResumes(t *testing.T) {
	ins := startInstances(t, 1)
	c := newClients(ins[0].url())
	a := grant(t, c, 5*time.Second, "a")
	b := grant(t, c, 5*time.Second, "b")
	keepAlive(t, c, a, 200*time.Millisecond)
	keepAlive(t, c, b, 200*time.Millisecond)
	proclaim := func(lease, term uint64, value string) uint64 {
		t.Helper()
		r, err := c.election.Proclaim(context.Background(), connect.NewRequest(&lockdv1.ProclaimRequest{Name: "db", LeaseId: lease, Term: term, Value: []byte(value)}))
		if err != nil {
			t.Fatalf("proclaim %s: %v", value, err)
		}
		return r.Msg.GetRevision()
	}

	// Connected: no leader, then a.
	o := observe(t, c, "db", 0)
	if m := o.next(); m.GetLeader() != nil {
		t.Fatalf("first observation %v, want no leader", m)
	}
	ca, err := c.election.Campaign(context.Background(), connect.NewRequest(&lockdv1.CampaignRequest{Name: "db", LeaseId: a, Value: []byte("a1")}))
	if err != nil {
		t.Fatal(err)
	}
	termA := ca.Msg.GetTerm()
	seen := o.next()
	if leaderText(seen) != fmt.Sprintf("%d/%d/a1", a, termA) || seen.GetRevision() != termA {
		// Not fatal: the resumes below show more.
		t.Errorf("observed %v at revision %d, want a leading in term %d at revision %d", leaderText(seen), seen.GetRevision(), termA, termA)
	}
	o.close()

	// Disconnected: a proclaims a2, b queues, a resigns and hands over to
	// b, b proclaims b2.
	revA2 := proclaim(a, termA, "a2")
	bDone := make(chan *lockdv1.CampaignResponse, 1)
	go func() {
		r, err := c.election.Campaign(context.Background(), connect.NewRequest(&lockdv1.CampaignRequest{Name: "db", LeaseId: b, Value: []byte("b1")}))
		if err != nil {
			t.Errorf("b's campaign: %v", err)
			bDone <- nil
			return
		}
		bDone <- r.Msg
	}()
	eventually(t, 5*time.Second, "b queued", func() error {
		if n := len(describe(t, c, "election/db").GetWaiters()); n != 1 {
			return fmt.Errorf("%d candidates waiting", n)
		}
		return nil
	})
	if _, err := c.election.Resign(context.Background(), connect.NewRequest(&lockdv1.ResignRequest{Name: "db", LeaseId: a, Term: termA})); err != nil {
		t.Fatal(err)
	}
	cb := <-bDone
	if cb == nil {
		t.FailNow()
	}
	termB := cb.GetTerm()
	revB2 := proclaim(b, termB, "b2")

	// want lists the changes after a revision, as they must be observed:
	// the handover may show its moment without a leader (the release is a
	// revision of its own, just before the grant).
	type change struct {
		text string
		rev  uint64
	}
	changes := []change{
		{fmt.Sprintf("%d/%d/a2", a, termA), revA2},
		{"none", termB - 1},
		{fmt.Sprintf("%d/%d/b1", b, termB), termB},
		{fmt.Sprintf("%d/%d/b2", b, termB), revB2},
	}
	// expect receives the changes after revision from o, then one made
	// now (so that anything repeated or left over shows before it).
	expect := func(o *observer, after uint64, value string) uint64 {
		t.Helper()
		var got []string
		var want []change
		for _, ch := range changes {
			if ch.rev > after {
				want = append(want, ch)
			}
		}
		for len(want) > 0 {
			m := o.next()
			got = append(got, fmt.Sprintf("%s@%d", leaderText(m), m.GetRevision()))
			if leaderText(m) != want[0].text && want[0].text == "none" {
				want = want[1:] // the moment without a leader was not shown
			}
			if leaderText(m) != want[0].text || m.GetRevision() != want[0].rev {
				t.Fatalf("resumed after %d: observed %v, want %v", after, got, want)
			}
			want = want[1:]
		}
		rev := proclaim(b, termB, value)
		changes = append(changes, change{fmt.Sprintf("%d/%d/%s", b, termB, value), rev})
		if m := o.next(); leaderText(m) != fmt.Sprintf("%d/%d/%s", b, termB, value) || m.GetRevision() != rev {
			t.Fatalf("resumed after %d: observed %v, then %v@%d, want %s@%d", after, got, leaderText(m), m.GetRevision(), value, rev)
		}
		return rev
	}

	// Resumed with the revision of the last observation: every change
	// since, once.
	o2 := observe(t, c, "db", seen.GetRevision())
	expect(o2, seen.GetRevision(), "b3")
	o2.close()
	// Resumed from the middle of what it missed, and from the end.
	o3 := observe(t, c, "db", revA2)
	last := expect(o3, revA2, "b4")
	o3.close()
	o4 := observe(t, c, "db", last)
	expect(o4, last, "b5")
}

// List pages through every lock of a prefix exactly once, in name order,
// whatever the page size, over every protocol; a lock that appears or
// disappears between pages does not make others repeat or go missing.
func TestAPIListPages(t *testing.T) {
	ins := startInstances(t, 1)
	setup := newClients(ins[0].url())
	a := grant(t, setup, 10*time.Second, "a")
	keepAlive(t, setup, a, 200*time.Millisecond)
	var names []string
	for i := range 23 {
		names = append(names, fmt.Sprintf("page/%02d", i))
	}
	// Neighbours that are not in the prefix "page/".
	others := []string{"page", "pagf/x", "pag/e", "app/x"}
	req := &lockdv1.AcquireRequest{Name: names[0], Also: append(slices.Clone(names[1:]), others...), LeaseId: a}
	if r, err := acquire(context.Background(), setup, req); err != nil || !r.GetGranted() {
		t.Fatalf("acquire: %v %v", r, err)
	}
	// A waiter, so that the pages show whole lock states.
	b := grant(t, setup, 10*time.Second, "b")
	keepAlive(t, setup, b, 200*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go acquire(ctx, setup, &lockdv1.AcquireRequest{Name: "page/05", LeaseId: b})
	eventually(t, 5*time.Second, "b queued", func() error {
		if n := len(describe(t, setup, "page/05").GetWaiters()); n != 1 {
			return fmt.Errorf("%d waiters", n)
		}
		return nil
	})

	list := func(c clients, limit uint32, token string) *lockdv1.ListResponse {
		t.Helper()
		r, err := c.lock.List(context.Background(), connect.NewRequest(&lockdv1.ListRequest{Prefix: "page/", Limit: limit, PageToken: token}))
		if err != nil {
			t.Fatalf("list (limit %d, token %q): %v", limit, token, err)
		}
		return r.Msg
	}
	// all pages through the prefix, calling between(page) after each page.
	all := func(c clients, limit uint32, between func(page int)) (got []string, pages int) {
		t.Helper()
		token := ""
		for {
			r := list(c, limit, token)
			pages++
			if limit > 0 && uint32(len(r.GetLocks())) > limit {
				t.Fatalf("page of %d locks, limit %d", len(r.GetLocks()), limit)
			}
			for _, l := range r.GetLocks() {
				if !strings.HasPrefix(l.GetName(), "page/") {
					t.Fatalf("%s listed under the prefix page/", l.GetName())
				}
				if len(l.GetHolders()) != 1 || l.GetHolders()[0].GetLeaseId() != a || l.GetRevision() != r.GetRevision() {
					t.Fatalf("listed %v", l)
				}
				if l.GetName() == "page/05" && len(l.GetWaiters()) != 1 {
					t.Fatalf("page/05 listed without its waiter: %v", l)
				}
				got = append(got, l.GetName())
			}
			if r.GetNextPageToken() == "" {
				return got, pages
			}
			if len(r.GetLocks()) == 0 {
				t.Fatal("an empty page with a next page token")
			}
			token = r.GetNextPageToken()
			if between != nil {
				between(pages)
			}
			if pages > 100 {
				t.Fatal("pages never end")
			}
		}
	}
	for protocol, opts := range protocols {
		c := newClients(ins[0].url(), opts...)
		for _, limit := range []uint32{1, 2, 7, 22, 23, 24, 0} {
			t.Run(fmt.Sprintf("%s/limit=%d", protocol, limit), func(t *testing.T) {
				got, pages := all(c, limit, nil)
				if !slices.Equal(got, names) {
					t.Fatalf("listed %v, want %v", got, names)
				}
				wantPages := 1
				if limit > 0 {
					// A full last page may need one more call to learn that
					// nothing follows; never more.
					wantPages = (len(names) + int(limit) - 1) / int(limit)
				}
				if pages != wantPages && pages != wantPages+1 {
					t.Fatalf("%d pages of %d, want %d", pages, limit, wantPages)
				}
			})
		}
	}

	// Changes between pages: a lock before the cursor and one after it go
	// away, and one appears before it and one after it. Everything that
	// stays is listed once, in order; what goes before the cursor was
	// listed already, what appears behind it is not.
	c := newClients(ins[0].url())
	release := func(name string) {
		if _, err := c.lock.Release(context.Background(), connect.NewRequest(&lockdv1.ReleaseRequest{Name: name, LeaseId: a})); err != nil {
			t.Fatalf("release %s: %v", name, err)
		}
	}
	hold := func(name string) {
		if r, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: name, LeaseId: a}); err != nil || !r.GetGranted() {
			t.Fatalf("acquire %s: %v %v", name, r, err)
		}
	}
	got, _ := all(c, 5, func(page int) {
		if page == 1 { // page/00 … page/04 listed
			release("page/02")
			release("page/17")
			hold("page/01a")
			hold("page/17a")
		}
	})
	want := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == "page/17" })
	want = append(want, "page/17a")
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("listed %v with changes between pages, want %v", got, want)
	}
}

// The page token is opaque: one List did not return is refused.
func TestAPIListBadPageToken(t *testing.T) {
	ins := startInstances(t, 1)
	c := newClients(ins[0].url())
	_, err := c.lock.List(context.Background(), connect.NewRequest(&lockdv1.ListRequest{Prefix: "page/", PageToken: "not base64!"}))
	if codeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("list with a bad page token: %v, want InvalidArgument", err)
	}
}
