package lockd

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Acquires and releases go to a node on one LockService.Pipeline stream,
// many calls to a message each way, instead of a unary RPC each: on a busy
// client that is several times less CPU per call, on both sides. A call on
// the stream means what the unary call means (same request ids, so a
// retry after a broken stream is as safe), and a node that does not serve
// Pipeline is called unary.

// maxPipelinedCalls bounds the calls open on one stream; more go unary.
// (The server allows 10,000.)
const maxPipelinedCalls = 4096

// maxPipelineBatch bounds the calls sent in one message.
const maxPipelineBatch = 128

// maxPipelineBatchBytes bounds a message's size, well inside the server's
// 1 MiB; a call larger than that alone (a multi-lock of many long names
// with a value, say) goes unary.
const maxPipelineBatchBytes = 256 << 10

// pipelineIdle is how long a stream without calls stays open.
const pipelineIdle = time.Minute

// unaryFor is how long a node that does not serve Pipeline is called
// unary before it is asked again (it may be upgraded meanwhile).
const unaryFor = time.Minute

// errUnary sends a call the unary way: its node does not serve Pipeline,
// the stream is full, or the call is too large for one.
var errUnary = errors.New("lockd: call unary")

// errIdle ends a stream that had no calls for pipelineIdle; a call that
// meets it opens another.
var errIdle = errors.New("lockd: the call stream was idle")

// pipeline is one stream of calls to one node.
type pipeline struct {
	e      *endpoint
	stream *connect.BidiStreamForClient[lockdv1.PipelineRequest, lockdv1.PipelineResponse]
	out    chan *pending // to the sender, which numbers calls in stream order
	cancel context.CancelFunc
	done   chan struct{} // closed once the stream is gone; err says why

	mu       sync.Mutex
	err      error
	next     uint64              // the last call id sent
	calls    map[uint64]*pending // sent, awaiting their answers
	busy     int                 // calls queued or sent whose callers wait
	answered bool                // an answer came: the node serves Pipeline
}

// pending is a call on its way: queued for the sender, then sent.
type pending struct {
	c      *lockdv1.PipelineCall
	answer chan *lockdv1.PipelineResult // buffered: the receiver never waits
	// Under pipeline.mu: dropped if its caller gave up before the sender
	// gave the call its id (c.Id, set when it is sent); the sender skips it.
	dropped bool
}

func newPipeline(e *endpoint) *pipeline {
	ctx, cancel := context.WithCancel(context.Background())
	p := &pipeline{
		e:      e,
		out:    make(chan *pending, maxPipelineBatch),
		cancel: cancel,
		done:   make(chan struct{}),
		calls:  map[uint64]*pending{},
	}
	p.stream = e.lock.Pipeline(ctx)
	go p.send()
	go p.receive()
	return p
}

// call sends c and waits for its answer. An error is as the unary call
// would return it; errUnary says to make the call unary instead, errIdle
// to make it on a new stream.
func (p *pipeline) call(ctx context.Context, c *lockdv1.PipelineCall) (*lockdv1.PipelineResult, error) {
	if proto.Size(c) > maxPipelineBatchBytes {
		return nil, errUnary
	}
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		if left <= 0 {
			<-ctx.Done() // due now; its timer may not have fired yet
			return nil, contextError(ctx)
		}
		c.Timeout = durationpb.New(left)
	}
	pc := &pending{c: c, answer: make(chan *lockdv1.PipelineResult, 1)}
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return nil, p.err
	}
	if p.busy >= maxPipelinedCalls {
		p.mu.Unlock()
		return nil, errUnary
	}
	p.busy++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.busy--
		p.mu.Unlock()
	}()

	select {
	case p.out <- pc:
	case <-p.done:
		return nil, p.err
	case <-ctx.Done():
		return nil, contextError(ctx) // never queued
	}
	select {
	case r := <-pc.answer:
		if dl, ok := ctx.Deadline(); ok && r.GetError().GetCode() == connect.CodeDeadlineExceeded.String() && time.Until(dl) < time.Second {
			// The node's timer for the call ran out, and the caller's is
			// about to: wait for it, so that the caller sees its own
			// context ended, as a unary call's caller does.
			<-ctx.Done()
			return nil, contextError(ctx)
		}
		return answer(r)
	case <-p.done:
		select {
		case r := <-pc.answer: // answered just before the stream went
			return answer(r)
		default:
			return nil, p.err
		}
	case <-ctx.Done():
		p.giveUp(pc)
		return nil, contextError(ctx)
	}
}

// giveUp abandons a call whose caller went away. One not yet sent is
// dropped; for one sent, the node is told, and ends it as a unary call
// whose caller went away: an acquire is withdrawn, and a grant it got
// released, even one made just before the cancel arrived.
func (p *pipeline) giveUp(pc *pending) {
	p.mu.Lock()
	sent := pc.c.GetId() != 0
	pc.dropped = !sent
	if sent {
		delete(p.calls, pc.c.GetId())
	}
	p.mu.Unlock()
	if !sent {
		return
	}
	cancel := &pending{c: &lockdv1.PipelineCall{Id: pc.c.GetId(), Call: &lockdv1.PipelineCall_Cancel{Cancel: true}}}
	select {
	case p.out <- cancel:
	default:
		go func() {
			select {
			case p.out <- cancel:
			case <-p.done:
			}
		}()
	}
}

// answer turns a call's result into what the unary call returns.
func answer(r *lockdv1.PipelineResult) (*lockdv1.PipelineResult, error) {
	if e := r.GetError(); e != nil {
		var code connect.Code
		if code.UnmarshalText([]byte(e.GetCode())) != nil {
			code = connect.CodeUnknown
		}
		err := connect.NewWireError(code, errors.New(e.GetMessage()))
		if u := e.GetLeaderUrl(); u != "" {
			err.Meta().Set(leaderHeader, u)
		}
		return nil, err
	}
	return r, nil
}

// contextError is ctx's end as a unary call reports it.
func contextError(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
	}
	return connect.NewError(connect.CodeCanceled, ctx.Err())
}

// send writes the calls, as many to a message as are queued, numbering
// them as it goes (ids go up on the stream), and ends the stream once it
// has been idle for pipelineIdle.
func (p *pipeline) send() {
	idle := time.NewTimer(pipelineIdle)
	defer idle.Stop()
	var next *pending // taken from out, for the next message
	for {
		pc := next
		next = nil
		if pc == nil {
			select {
			case pc = <-p.out:
			case <-idle.C:
				if p.closeIfIdle() {
					return
				}
				idle.Reset(pipelineIdle)
				continue
			case <-p.done:
				return
			}
		}
		// With other calls in flight, let the callers that are running
		// queue their calls first: answers come in batches and wake many
		// callers at once, and one message for all their next calls is one
		// write, not many. A lone caller is not kept waiting.
		p.mu.Lock()
		inFlight := len(p.calls) > 0
		p.mu.Unlock()
		if inFlight {
			runtime.Gosched()
		}
		req := &lockdv1.PipelineRequest{}
		size := proto.Size(pc.c)
		p.mu.Lock()
		for {
			if p.number(pc) {
				req.Calls = append(req.Calls, pc.c)
			}
			if len(req.Calls) == maxPipelineBatch {
				break
			}
			select {
			case pc = <-p.out:
				if size += proto.Size(pc.c); size > maxPipelineBatchBytes && len(req.Calls) > 0 {
					next = pc
					pc = nil
				}
			default:
				pc = nil
			}
			if pc == nil {
				break
			}
		}
		p.mu.Unlock()
		idle.Reset(pipelineIdle)
		if len(req.Calls) == 0 {
			continue
		}
		if err := p.stream.Send(req); err != nil {
			// The stream failed; the receiver learns why from Receive.
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				p.fail(err)
			}
			return
		}
	}
}

// number gives a call its id, in the order calls go on the stream, and
// says whether it is to be sent (a cancel always is; a call whose caller
// gave up while it was queued is not). Call with p.mu held.
func (p *pipeline) number(pc *pending) bool {
	if pc.c.GetCancel() {
		return true
	}
	if pc.dropped {
		return false
	}
	p.next++
	pc.c.Id = p.next
	p.calls[p.next] = pc
	return true
}

// receive hands each answer to its caller.
func (p *pipeline) receive() {
	for {
		resp, err := p.stream.Receive()
		if err != nil {
			p.fail(err)
			return
		}
		p.mu.Lock()
		p.answered = true
		for _, r := range resp.GetResults() {
			if pc, ok := p.calls[r.GetId()]; ok {
				delete(p.calls, r.GetId())
				pc.answer <- r
			}
		}
		p.mu.Unlock()
	}
}

// closeIfIdle ends the stream if no call is open, and says whether it did.
func (p *pipeline) closeIfIdle() bool {
	p.mu.Lock()
	if p.busy > 0 || p.err != nil {
		p.mu.Unlock()
		return false
	}
	p.err = errIdle
	p.mu.Unlock()
	p.end()
	return true
}

// fail ends the stream: every open call fails with err as the unary call
// fails on a broken connection, so it is retried (with its request id).
func (p *pipeline) fail(err error) {
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return
	}
	var ce *connect.Error
	switch {
	case connect.CodeOf(err) == connect.CodeUnimplemented && !p.answered:
		p.err = errUnary // an older node, or a proxy that does not stream
	case errors.As(err, &ce) && connect.IsWireError(ce) && ce.Code() != connect.CodeUnavailable &&
		ce.Code() != connect.CodeUnknown && ce.Code() != connect.CodeInternal:
		p.err = ce // the node's answer (permission denied, say), which another would give too
	default:
		p.err = connect.NewError(connect.CodeUnavailable, fmt.Errorf("lockd: the call stream to %s ended: %w", p.e.url, err))
	}
	p.mu.Unlock()
	p.end()
}

// end closes the stream, once p.err says why.
func (p *pipeline) end() {
	close(p.done)
	// Reset the HTTP/2 stream, so that the node ends what it has open: a
	// cancelled context alone does not reach it once the stream is up.
	p.cancel()
	p.stream.CloseResponse()
	p.stream.CloseRequest()
	p.e.dropPipeline(p, p.err == errUnary)
}

// close ends the stream.
func (p *pipeline) close() { p.fail(errors.New("the client was closed")) }
