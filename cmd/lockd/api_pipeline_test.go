package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// pipe is a LockService.Pipeline stream under test, with its answers
// collected by call id.
type pipe struct {
	t       *testing.T
	stream  *connect.BidiStreamForClient[lockdv1.PipelineRequest, lockdv1.PipelineResponse]
	answers chan *lockdv1.PipelineResult
	ended   chan error
	cancel  context.CancelFunc
}

func openPipe(t *testing.T, c clients) *pipe {
	ctx, cancel := context.WithCancel(context.Background())
	p := &pipe{t: t, stream: c.lock.Pipeline(ctx), answers: make(chan *lockdv1.PipelineResult, 100), ended: make(chan error, 1), cancel: cancel}
	t.Cleanup(cancel)
	go func() {
		for {
			resp, err := p.stream.Receive()
			if err != nil {
				p.ended <- err
				return
			}
			for _, r := range resp.GetResults() {
				p.answers <- r
			}
		}
	}()
	return p
}

func (p *pipe) send(calls ...*lockdv1.PipelineCall) {
	p.t.Helper()
	if err := p.stream.Send(&lockdv1.PipelineRequest{Calls: calls}); err != nil {
		p.t.Fatalf("send: %v", err)
	}
}

// next returns the next n answers, by id.
func (p *pipe) next(n int) map[uint64]*lockdv1.PipelineResult {
	p.t.Helper()
	got := map[uint64]*lockdv1.PipelineResult{}
	for len(got) < n {
		select {
		case r := <-p.answers:
			if _, dup := got[r.GetId()]; dup {
				p.t.Fatalf("call %d answered twice", r.GetId())
			}
			got[r.GetId()] = r
		case err := <-p.ended:
			p.t.Fatalf("the stream ended after %d of %d answers: %v", len(got), n, err)
		case <-time.After(10 * time.Second):
			p.t.Fatalf("%d of %d answers within 10s: %v", len(got), n, got)
		}
	}
	return got
}

// close resets the stream, as a client that goes away does.
func (p *pipe) close() {
	p.cancel()
	p.stream.CloseResponse()
	p.stream.CloseRequest()
}

// quiet checks that no answer comes for a while.
func (p *pipe) quiet(d time.Duration) {
	p.t.Helper()
	select {
	case r := <-p.answers:
		p.t.Fatalf("unexpected answer %v", r)
	case <-time.After(d):
	}
}

// heldWithRival grants two leases kept alive, a and b, and has a take
// lock name.
func heldWithRival(t *testing.T, c clients, name string) (a, b uint64) {
	t.Helper()
	a = grant(t, c, 5*time.Second, "a")
	b = grant(t, c, 5*time.Second, "b")
	keepAlive(t, c, a, 200*time.Millisecond)
	keepAlive(t, c, b, 200*time.Millisecond)
	if r, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: name, LeaseId: a}); err != nil || !r.GetGranted() {
		t.Fatal(r, err)
	}
	return a, b
}

// waitWaiters waits until lock name has n waiters.
func waitWaiters(t *testing.T, c clients, name string, n int, what string) {
	t.Helper()
	eventually(t, 5*time.Second, what, func() error {
		if w := len(describe(t, c, name).GetWaiters()); w != n {
			return fmt.Errorf("%d waiters, want %d", w, n)
		}
		return nil
	})
}

func acquireCall(id uint64, req *lockdv1.AcquireRequest) *lockdv1.PipelineCall {
	return &lockdv1.PipelineCall{Id: id, Call: &lockdv1.PipelineCall_Acquire{Acquire: req}}
}

func releaseCall(id uint64, req *lockdv1.ReleaseRequest) *lockdv1.PipelineCall {
	return &lockdv1.PipelineCall{Id: id, Call: &lockdv1.PipelineCall_Release{Release: req}}
}

func cancelCall(id uint64) *lockdv1.PipelineCall {
	return &lockdv1.PipelineCall{Id: id, Call: &lockdv1.PipelineCall_Cancel{Cancel: true}}
}

// Calls on a Pipeline stream mean what their unary twins mean: grants in
// queue order with rising tokens, each answered by its id when it ends,
// in whatever order; several to a message.
func TestAPIPipelineCalls(t *testing.T) {
	ins := startInstances(t, 3)
	leader := waitLeader(t, ins)
	for _, via := range []*instance{leader, followerOf(ins, leader)} {
		c := newClients(via.url())
		name := "pipe/" + strings.TrimPrefix(via.url(), "http://")
		a := grant(t, c, 5*time.Second, "a")
		b := grant(t, c, 5*time.Second, "b")
		keepAlive(t, c, a, 200*time.Millisecond)
		keepAlive(t, c, b, 200*time.Millisecond)
		p := openPipe(t, c)
		// a takes the lock; b queues behind it. (Calls in one message run
		// concurrently, as unary calls would.)
		p.send(acquireCall(1, &lockdv1.AcquireRequest{Name: name, LeaseId: a, RequestId: 1}))
		got := p.next(1)
		ra := got[1].GetAcquire()
		if !ra.GetGranted() || ra.GetToken() == 0 {
			t.Fatalf("a's acquire: %v", got)
		}
		p.send(acquireCall(2, &lockdv1.AcquireRequest{Name: name, LeaseId: b, RequestId: 1}),
			releaseCall(3, &lockdv1.ReleaseRequest{Name: name, LeaseId: b, RequestId: 7}))
		if e := p.next(1)[3].GetError(); e.GetCode() != connect.CodeFailedPrecondition.String() {
			t.Fatalf("release by a waiter: %v, want failed_precondition", e)
		}
		p.quiet(200 * time.Millisecond) // b waits
		if w := describe(t, c, name).GetWaiters(); len(w) != 1 || w[0].GetLeaseId() != b {
			t.Fatalf("waiters %v, want b", w)
		}
		// a's release answers, and grants b, whose answer follows.
		p.send(releaseCall(4, &lockdv1.ReleaseRequest{Name: name, LeaseId: a, Token: ra.GetToken(), RequestId: 2}))
		got = p.next(2)
		if got[4].GetRelease() == nil {
			t.Fatalf("release: %v", got[4])
		}
		rb := got[2].GetAcquire()
		if !rb.GetGranted() || rb.GetToken() <= ra.GetToken() {
			t.Fatalf("b's acquire: %v after a's token %d", got[2], ra.GetToken())
		}
		// A retried call (same request id, new call id) finds its grant.
		p.send(acquireCall(5, &lockdv1.AcquireRequest{Name: name, LeaseId: b, RequestId: 1}))
		if r := p.next(1)[5].GetAcquire(); !r.GetGranted() || r.GetToken() != rb.GetToken() {
			t.Fatalf("retried acquire: %v, want token %d", r, rb.GetToken())
		}
		if d := describe(t, c, name); len(d.GetHolders()) != 1 || len(d.GetWaiters()) != 0 {
			t.Fatalf("after the retry: %v", d)
		}
	}
}

// A waiter on a Pipeline stream is withdrawn when its caller cancels it,
// when its timeout runs out (deadline_exceeded, as a unary call's), and
// when the stream ends; a grant is never left with a caller that gave up.
func TestAPIPipelineWithdraws(t *testing.T) {
	ins := startInstances(t, 1)
	c := newClients(ins[0].url())
	a, b := heldWithRival(t, c, "pw")
	p := openPipe(t, c)

	p.send(acquireCall(1, &lockdv1.AcquireRequest{Name: "pw", LeaseId: b, RequestId: 1}))
	waitWaiters(t, c, "pw", 1, "b queued")
	p.send(cancelCall(1))
	if e := p.next(1)[1].GetError(); e.GetCode() != connect.CodeCanceled.String() {
		t.Fatalf("cancelled call answered %v, want canceled", e)
	}
	waitWaiters(t, c, "pw", 0, "the cancelled waiter withdrawn")

	p.send(&lockdv1.PipelineCall{Id: 2, Timeout: durationpb.New(300 * time.Millisecond),
		Call: &lockdv1.PipelineCall_Acquire{Acquire: &lockdv1.AcquireRequest{Name: "pw", LeaseId: b, RequestId: 2}}})
	if e := p.next(1)[2].GetError(); e.GetCode() != connect.CodeDeadlineExceeded.String() {
		t.Fatalf("timed-out call answered %v, want deadline_exceeded", e)
	}
	waitWaiters(t, c, "pw", 0, "the timed-out waiter withdrawn")

	p.send(acquireCall(3, &lockdv1.AcquireRequest{Name: "pw", LeaseId: b, RequestId: 3}))
	waitWaiters(t, c, "pw", 1, "b queued again")
	p.close() // the client goes away
	waitWaiters(t, c, "pw", 0, "the stream's waiter withdrawn")
	// Nothing was left with b: a's release frees the lock.
	if _, err := c.lock.Release(context.Background(), connect.NewRequest(&lockdv1.ReleaseRequest{Name: "pw", LeaseId: a})); err != nil {
		t.Fatal(err)
	}
	if d := describe(t, c, "pw"); len(d.GetHolders()) != 0 || len(d.GetWaiters()) != 0 {
		t.Fatalf("after a's release: %v", d)
	}
}

// Bad calls on a Pipeline stream are answered each with the code its
// unary twin gets (or that the stream's rules name), change nothing, and
// leave the stream serving; an id that does not go up ends the stream.
func TestAPIPipelineBadInput(t *testing.T) {
	ins := startInstances(t, 1)
	c := newClients(ins[0].url())
	a := grant(t, c, 5*time.Second, "a")
	keepAlive(t, c, a, 200*time.Millisecond)
	held, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: "pb", LeaseId: a})
	if err != nil {
		t.Fatal(err)
	}
	p := openPipe(t, c)
	// A call that stays open.
	b := grant(t, c, 5*time.Second, "b")
	keepAlive(t, c, b, 200*time.Millisecond)
	p.send(acquireCall(1, &lockdv1.AcquireRequest{Name: "pb", LeaseId: b, RequestId: 1}))
	waitWaiters(t, c, "pb", 1, "b queued")
	before := describe(t, c, "pb")
	cases := []struct {
		call *lockdv1.PipelineCall
		code connect.Code
		says string
	}{
		{&lockdv1.PipelineCall{Id: 2}, connect.CodeInvalidArgument, "names no call"},
		{&lockdv1.PipelineCall{Id: 3, Timeout: durationpb.New(-time.Second), Call: &lockdv1.PipelineCall_Acquire{Acquire: &lockdv1.AcquireRequest{Name: "pb", LeaseId: a}}}, connect.CodeInvalidArgument, "timeout"},
		{acquireCall(4, &lockdv1.AcquireRequest{Name: "", LeaseId: a}), connect.CodeInvalidArgument, "name"},
		{acquireCall(5, &lockdv1.AcquireRequest{Name: strings.Repeat("x", 513), LeaseId: a}), connect.CodeInvalidArgument, "name"},
		{acquireCall(6, &lockdv1.AcquireRequest{Name: "pb", LeaseId: 999999}), connect.CodeNotFound, "lease"},
		{releaseCall(7, &lockdv1.ReleaseRequest{Name: "pb", LeaseId: b}), connect.CodeFailedPrecondition, ""},
		{releaseCall(8, &lockdv1.ReleaseRequest{Name: "pb", LeaseId: a, Token: held.GetToken() - 1}), connect.CodeFailedPrecondition, ""},
		{releaseCall(9, &lockdv1.ReleaseRequest{Name: "pb"}), connect.CodeInvalidArgument, "lease_id"},
		{cancelCall(77), 0, ""}, // nothing open by that id: ignored
	}
	for _, tc := range cases {
		p.send(tc.call)
		if tc.code == 0 {
			p.quiet(100 * time.Millisecond)
			continue
		}
		e := p.next(1)[tc.call.GetId()].GetError()
		if e.GetCode() != tc.code.String() || !strings.Contains(e.GetMessage(), tc.says) {
			t.Errorf("call %v: answered %v, want %v saying %q", tc.call, e, tc.code, tc.says)
		}
	}
	if after := describe(t, c, "pb"); !proto.Equal(before, after) {
		t.Fatalf("bad calls changed the lock:\n%v\nto\n%v", before, after)
	}
	// The stream still serves: a's release grants b's open call.
	p.send(releaseCall(80, &lockdv1.ReleaseRequest{Name: "pb", LeaseId: a, Token: held.GetToken()}))
	got := p.next(2)
	if got[80].GetRelease() == nil || !got[1].GetAcquire().GetGranted() {
		t.Fatalf("after the bad calls: %v", got)
	}
	// An id that does not go up ends the stream, and with it its calls.
	c2 := grant(t, c, 5*time.Second, "c")
	keepAlive(t, c, c2, 200*time.Millisecond)
	p.send(acquireCall(81, &lockdv1.AcquireRequest{Name: "pb", LeaseId: c2, RequestId: 1}))
	waitWaiters(t, c, "pb", 1, "c queued")
	p.send(acquireCall(81, &lockdv1.AcquireRequest{Name: "pb", LeaseId: c2, RequestId: 2}))
	for ended := false; !ended; {
		select {
		case err := <-p.ended:
			if codeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "go up") {
				t.Fatalf("stream ended with %v, want invalid_argument about ids", err)
			}
			ended = true
		case r := <-p.answers:
			if r.GetId() != 81 || r.GetError().GetCode() != connect.CodeCanceled.String() {
				t.Fatalf("answered %v, want the open call cancelled and the stream ended", r)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the stream did not end")
		}
	}
	waitWaiters(t, c, "pb", 0, "c's waiter withdrawn with the stream")
}

// A caller that gives up is withdrawn however many requests its lease has
// made since it queued (the table remembers only a lease's last request
// ids; the withdrawal names the waiter too).
func TestAPIWithdrawAfterManyRequests(t *testing.T) {
	ins := startInstances(t, 1)
	c := newClients(ins[0].url())
	_, b := heldWithRival(t, c, "many")
	ctx, giveUp := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := acquire(ctx, c, &lockdv1.AcquireRequest{Name: "many", LeaseId: b, RequestId: 1})
		done <- err
	}()
	waitWaiters(t, c, "many", 1, "b queued")
	for i := range 40 { // more than the table remembers per lease
		name := fmt.Sprintf("many/%d", i)
		r, err := acquire(context.Background(), c, &lockdv1.AcquireRequest{Name: name, LeaseId: b, RequestId: uint64(100 + i)})
		if err != nil || !r.GetGranted() {
			t.Fatal(r, err)
		}
	}
	giveUp()
	if err := <-done; codeOf(err) != connect.CodeCanceled {
		t.Fatalf("given up: %v", err)
	}
	waitWaiters(t, c, "many", 0, "b's old waiter withdrawn")
}
