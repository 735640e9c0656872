package server

import (
	"testing"

	"github.com/lockd-io/lockd/locks"
)

func ev(rev uint64, name string) locks.Event {
	return locks.Event{Type: locks.Granted, Revision: rev, Name: name}
}

func all(locks.Event) bool { return true }

func TestHubResume(t *testing.T) {
	h := newHub()
	h.publish([]locks.Event{ev(5, "a"), ev(6, "b"), ev(6, "a"), ev(7, "a")})
	for _, tc := range []struct {
		after    uint64
		complete bool
		replay   int
	}{
		{after: 0, complete: false},
		{after: 4, complete: false}, // the history starts at 5: revision 5 may have had earlier events
		{after: 5, complete: true, replay: 3},
		{after: 6, complete: true, replay: 1},
		{after: 7, complete: true, replay: 0},
		{after: 9, complete: false}, // a revision this node has not reached
	} {
		s, replay, complete := h.subscribe(all, tc.after)
		s.close()
		if complete != tc.complete || len(replay) != tc.replay {
			t.Errorf("after %d: complete=%v replay=%d, want %v %d", tc.after, complete, len(replay), tc.complete, tc.replay)
		}
	}
}

// A Reset (the table jumped to a snapshot) cuts every subscriber off and
// forgets the history, since the events in the jump are unknown.
func TestHubReset(t *testing.T) {
	h := newHub()
	h.publish([]locks.Event{ev(5, "a"), ev(6, "a")})
	s, _, _ := h.subscribe(all, 0)
	h.publish([]locks.Event{{Type: locks.Reset, Revision: 100}})
	select {
	case <-s.lost:
	default:
		t.Fatal("a subscriber was not cut off by a reset")
	}
	if _, _, complete := h.subscribe(all, 5); complete {
		t.Fatal("a resume across a reset was called complete")
	}
}

// A subscriber that falls behind is cut off, never blocks publish.
func TestHubSlowSubscriber(t *testing.T) {
	h := newHub()
	s, _, _ := h.subscribe(all, 0)
	for i := range subBuffer + 1 {
		h.publish([]locks.Event{ev(uint64(i+1), "a")})
	}
	select {
	case <-s.lost:
	default:
		t.Fatal("a subscriber that fell behind was not cut off")
	}
}

// A lease's subscriber sees that lease's events only, is cut off when it
// falls behind or the table resets, and is forgotten when closed.
func TestHubLeaseSubscriber(t *testing.T) {
	h := newHub()
	s := h.subscribeLease(7, leaseSubBuffer, all)
	other := h.subscribeLease(8, leaseSubBuffer, all)
	h.publish([]locks.Event{
		{Type: locks.Granted, Revision: 1, Name: "a", LeaseID: 7},
		{Type: locks.Granted, Revision: 2, Name: "b", LeaseID: 8},
		{Type: locks.Granted, Revision: 3, Name: "c"},
	})
	if got := len(s.c); got != 1 {
		t.Fatalf("lease 7's subscriber got %d events, want 1", got)
	}
	if e := <-s.c; e.Name != "a" {
		t.Fatalf("lease 7's subscriber got %+v", e)
	}
	other.close()
	if _, ok := h.byLease[8]; ok {
		t.Fatal("a closed lease subscriber is still indexed")
	}
	for i := range leaseSubBuffer + 1 {
		h.publish([]locks.Event{{Type: locks.Granted, Revision: uint64(10 + i), Name: "a", LeaseID: 7}})
	}
	select {
	case <-s.lost:
	default:
		t.Fatal("a lease subscriber that fell behind was not cut off")
	}
	s.close() // after a cut-off: no effect
	r := h.subscribeLease(9, leaseSubBuffer, all)
	h.publish([]locks.Event{{Type: locks.Reset, Revision: 100}})
	select {
	case <-r.lost:
	default:
		t.Fatal("a lease subscriber was not cut off by a reset")
	}
	if len(h.byLease) != 0 {
		t.Fatalf("subscribers left indexed: %v", h.byLease)
	}
}
