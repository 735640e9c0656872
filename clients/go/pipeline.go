package lockd

import (
	"context"
	"errors"
	"fmt"
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
	out    chan *lockdv1.PipelineCall
	cancel context.CancelFunc
	done   chan struct{} // closed once the stream is gone; err says why

	mu       sync.Mutex
	err      error
	next     uint64
	calls    map[uint64]chan *lockdv1.PipelineResult
	answered bool // an answer came: the node serves Pipeline
}

func newPipeline(e *endpoint) *pipeline {
	ctx, cancel := context.WithCancel(context.Background())
	p := &pipeline{
		e:      e,
		out:    make(chan *lockdv1.PipelineCall, maxPipelineBatch),
		cancel: cancel,
		done:   make(chan struct{}),
		calls:  map[uint64]chan *lockdv1.PipelineResult{},
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
	ch := make(chan *lockdv1.PipelineResult, 1)
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return nil, p.err
	}
	if len(p.calls) >= maxPipelinedCalls {
		p.mu.Unlock()
		return nil, errUnary
	}
	p.next++
	id := p.next
	p.calls[id] = ch
	p.mu.Unlock()

	c.Id = id
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		if left <= 0 {
			p.forget(id)
			return nil, connect.NewError(connect.CodeDeadlineExceeded, context.DeadlineExceeded)
		}
		c.Timeout = durationpb.New(left)
	}
	select {
	case p.out <- c:
	case <-p.done:
		p.forget(id)
		return nil, p.err
	case <-ctx.Done():
		p.forget(id) // never sent
		return nil, contextError(ctx)
	}
	select {
	case r := <-ch:
		return answer(r)
	case <-p.done:
		select {
		case r := <-ch: // answered just before the stream went
			return answer(r)
		default:
			return nil, p.err
		}
	case <-ctx.Done():
		// The node ends the call as a unary call whose caller went away:
		// an acquire is withdrawn, and a grant it got released, even one
		// made just before the cancel arrived.
		p.forget(id)
		select {
		case p.out <- &lockdv1.PipelineCall{Id: id, Call: &lockdv1.PipelineCall_Cancel{Cancel: true}}:
		default:
			go func() {
				select {
				case p.out <- &lockdv1.PipelineCall{Id: id, Call: &lockdv1.PipelineCall_Cancel{Cancel: true}}:
				case <-p.done:
				}
			}()
		}
		return nil, contextError(ctx)
	}
}

// forget drops a call nobody waits for.
func (p *pipeline) forget(id uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.calls, id)
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

// send writes the calls, as many to a message as are queued, and ends
// the stream once it has been idle for pipelineIdle.
func (p *pipeline) send() {
	idle := time.NewTimer(pipelineIdle)
	defer idle.Stop()
	var next *lockdv1.PipelineCall // taken from out, for the next message
	for {
		c := next
		next = nil
		if c == nil {
			select {
			case c = <-p.out:
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
		req := &lockdv1.PipelineRequest{Calls: []*lockdv1.PipelineCall{c}}
		size := proto.Size(c)
	more:
		for len(req.Calls) < maxPipelineBatch {
			select {
			case c := <-p.out:
				if size += proto.Size(c); size > maxPipelineBatchBytes {
					next = c
					break more
				}
				req.Calls = append(req.Calls, c)
			default:
				break more
			}
		}
		idle.Reset(pipelineIdle)
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
			if ch, ok := p.calls[r.GetId()]; ok {
				delete(p.calls, r.GetId())
				ch <- r
			}
		}
		p.mu.Unlock()
	}
}

// closeIfIdle ends the stream if no call is open, and says whether it did.
func (p *pipeline) closeIfIdle() bool {
	p.mu.Lock()
	if len(p.calls) > 0 || p.err != nil {
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
