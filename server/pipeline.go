package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"time"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"github.com/lockd-io/lockd/proto/lockd/v1/lockdv1connect"
)

// maxPipelineCalls bounds the calls open at once on one Pipeline stream:
// each holds a goroutine and, while it waits, a subscription.
const maxPipelineCalls = 10_000

// maxPipelineBatch bounds the answers sent in one message.
const maxPipelineBatch = 256

// grantsRemembered is how many of its last granted acquires a stream
// remembers, so that a cancel that crossed its answer on the wire still
// undoes the grant.
const grantsRemembered = 1024

// Pipeline serves many Acquire and Release calls on one stream. Each call
// runs as its unary twin would, on a goroutine of its own, under a context
// that ends with its timeout, its cancel, or the stream; answers go out as
// they come, batched by one writer. The saving over unary calls is all in
// the transport: no HTTP/2 stream, headers or handler goroutine per call,
// and many answers to one write.
func (h *lockHandler) Pipeline(ctx context.Context, stream *connect.BidiStream[lockdv1.PipelineRequest, lockdv1.PipelineResponse]) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	p := &pipeline{
		h:       h,
		ctx:     ctx,
		stop:    stop,
		open:    map[uint64]context.CancelFunc{},
		granted: map[uint64]*lockdv1.AcquireRequest{},
		results: make(chan *lockdv1.PipelineResult, maxPipelineBatch),
	}
	written := make(chan error, 1)
	go func() { written <- p.write(stream) }()

	// Receive on a goroutine of its own, so that the stream can end while
	// a Receive waits (when the server drains, or the credentials change);
	// it returns once the handler has, and the request body is closed.
	reqs := make(chan *lockdv1.PipelineRequest)
	received := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Receive()
			if err != nil {
				received <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()

	var err error
loop:
	for {
		select {
		case req := <-reqs:
			for _, c := range req.GetCalls() {
				p.start(c)
			}
		case err = <-received:
			break loop
		case <-ctx.Done():
			err = ctx.Err()
			break loop
		case <-h.s.bg.Done():
			// Draining: the open calls end by themselves (a waiter stays
			// queued for its client's retry on another node, as in Acquire).
			err = errShuttingDown
			break loop
		}
	}
	if errors.Is(err, io.EOF) {
		err = nil // the client has said all it will: answer what is open
	} else if err != errShuttingDown {
		// The client is gone, or sent garbage: its open calls end as a
		// unary call's do when its client goes away.
		stop()
	}
	p.calls.Wait()
	close(p.results)
	if werr := <-written; err == nil {
		err = werr
	}
	return err
}

// pipeline is one Pipeline stream's open calls.
type pipeline struct {
	h       *lockHandler
	ctx     context.Context // the stream's; every call's context derives from it
	stop    context.CancelFunc
	calls   sync.WaitGroup
	results chan *lockdv1.PipelineResult

	mu   sync.Mutex
	open map[uint64]context.CancelFunc
	// granted are the stream's last granted acquires (call id → request),
	// oldest first in grantedIDs.
	granted    map[uint64]*lockdv1.AcquireRequest
	grantedIDs []uint64
}

// start runs a call, or cancels the open call it names.
func (p *pipeline) start(c *lockdv1.PipelineCall) {
	id := c.GetId()
	if _, ok := c.GetCall().(*lockdv1.PipelineCall_Cancel); ok {
		p.mu.Lock()
		cancel := p.open[id]
		granted := p.granted[id]
		delete(p.granted, id)
		p.mu.Unlock()
		switch {
		case cancel != nil:
			cancel()
		case granted != nil:
			// The grant was answered before the cancel came: the caller
			// never saw it. Undo it as Acquire undoes a grant that won the
			// race with its withdrawal (the holder hears of it as lost, in
			// case it took the lock again meanwhile).
			p.h.s.cancelInBackground(p.ctx, granted.GetLeaseId(), granted.GetRequestId())
		}
		return
	}
	var timeout time.Duration
	if t := c.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() <= 0 {
			p.answer(id, nil, invalid("call %d: timeout %v is not a positive duration", id, t.AsDuration()))
			return
		}
		timeout = t.AsDuration()
	}
	ctx, cancel := context.WithCancel(p.ctx)
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(p.ctx, timeout)
	}
	p.mu.Lock()
	_, dup := p.open[id]
	full := len(p.open) >= maxPipelineCalls
	if !dup && !full {
		p.open[id] = cancel
		delete(p.granted, id) // a cancel names the last call of its id
	}
	p.mu.Unlock()
	switch {
	case dup:
		cancel()
		p.answer(id, nil, invalid("call %d is already open on this stream", id))
		return
	case full:
		cancel()
		p.answer(id, nil, connect.NewError(connect.CodeResourceExhausted,
			fmt.Errorf("this stream has %d calls open, the most it may; wait for some to end, or open another stream", maxPipelineCalls)))
		return
	}
	p.calls.Add(1)
	go func() {
		defer p.calls.Done()
		res, err := p.run(ctx, c)
		p.mu.Lock()
		delete(p.open, id)
		if a := c.GetAcquire(); res.GetAcquire().GetGranted() && a.GetRequestId() != 0 {
			p.rememberGrant(id, a)
		}
		p.mu.Unlock()
		cancel()
		p.answer(id, res, err)
	}()
}

// rememberGrant notes a granted acquire, forgetting the oldest beyond
// grantsRemembered. Call with p.mu held.
func (p *pipeline) rememberGrant(id uint64, a *lockdv1.AcquireRequest) {
	if len(p.grantedIDs) == grantsRemembered {
		delete(p.granted, p.grantedIDs[0])
		p.grantedIDs = p.grantedIDs[1:]
	}
	p.granted[id] = a
	p.grantedIDs = append(p.grantedIDs, id)
}

// run makes one call as its unary twin, with the same checks and metrics.
func (p *pipeline) run(ctx context.Context, c *lockdv1.PipelineCall) (res *lockdv1.PipelineResult, err error) {
	s := p.h.s
	var procedure string
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error().Str("procedure", procedure).Interface("panic", r).Bytes("stack", debug.Stack()).Msg("pipelined call panicked")
			res, err = nil, connect.NewError(connect.CodeInternal, fmt.Errorf("internal error in %s", procedure))
		}
		if procedure != "" {
			s.metrics.rpc.WithLabelValues(procedure, codeLabel(err)).Observe(time.Since(start).Seconds())
		}
	}()
	switch call := c.GetCall().(type) {
	case *lockdv1.PipelineCall_Acquire:
		procedure = lockdv1connect.LockServiceAcquireProcedure
		if err := p.authorize(ctx, procedure, call.Acquire); err != nil {
			return nil, err
		}
		r, err := p.h.Acquire(ctx, connect.NewRequest(call.Acquire))
		if err != nil {
			return nil, err
		}
		return &lockdv1.PipelineResult{Result: &lockdv1.PipelineResult_Acquire{Acquire: r.Msg}}, nil
	case *lockdv1.PipelineCall_Release:
		procedure = lockdv1connect.LockServiceReleaseProcedure
		if err := p.authorize(ctx, procedure, call.Release); err != nil {
			return nil, err
		}
		r, err := p.h.Release(ctx, connect.NewRequest(call.Release))
		if err != nil {
			return nil, err
		}
		return &lockdv1.PipelineResult{Result: &lockdv1.PipelineResult_Release{Release: r.Msg}}, nil
	default:
		return nil, invalid("call %d names no call (acquire, release or cancel)", c.GetId())
	}
}

// authorize checks a call's names and leases as its unary procedure's
// rule does; the stream's caller was authenticated when it opened.
func (p *pipeline) authorize(ctx context.Context, procedure string, msg any) error {
	r := rules[procedure]
	return p.h.s.authorize(ctx, &r, msg)
}

// answer queues a call's result or error for the writer.
func (p *pipeline) answer(id uint64, res *lockdv1.PipelineResult, err error) {
	if err != nil {
		res = &lockdv1.PipelineResult{Result: &lockdv1.PipelineResult_Error{Error: pipelineError(p.h.s, err)}}
	}
	res.Id = id
	p.results <- res
}

// pipelineError is err as the unary call would have answered it.
func pipelineError(s *Server, err error) *lockdv1.PipelineError {
	var ce *connect.Error
	if !errors.As(toConnect(err), &ce) {
		return &lockdv1.PipelineError{Code: connect.CodeInternal.String(), Message: err.Error()}
	}
	pe := &lockdv1.PipelineError{Code: ce.Code().String(), Message: ce.Message()}
	if ce.Code() == connect.CodeUnavailable {
		pe.LeaderUrl = ce.Meta().Get(LeaderHeader)
		if pe.LeaderUrl == "" {
			pe.LeaderUrl = s.raft.LeaderURL()
		}
	}
	return pe
}

// write sends the answers, as many to a message as are ready, until the
// results channel closes. If the stream breaks, it ends the calls (their
// answers could not be sent) and drains what they still answer.
func (p *pipeline) write(stream *connect.BidiStream[lockdv1.PipelineRequest, lockdv1.PipelineResponse]) error {
	var err error
	for r := range p.results {
		if err != nil {
			continue
		}
		batch := &lockdv1.PipelineResponse{Results: []*lockdv1.PipelineResult{r}}
	more:
		for len(batch.Results) < maxPipelineBatch {
			select {
			case r, ok := <-p.results:
				if !ok {
					break more
				}
				batch.Results = append(batch.Results, r)
			default:
				break more
			}
		}
		if err = stream.Send(batch); err != nil {
			p.stop() // nobody hears the answers: end the calls
		}
	}
	return err
}
