package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
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
// undoes the grant. A cancel follows its call's answer within a round trip
// of the client; a stream answering 10,000 grants a second covers 400 ms.
const grantsRemembered = 4096

// Pipeline serves many Acquire and Release calls on one stream. Each call
// runs as its unary twin would, on a goroutine of its own, under a context
// that ends with its timeout, its cancel, or its client's going away;
// answers go out as they come, batched by one writer. The saving over
// unary calls is all in the transport: no HTTP/2 stream, headers or
// handler goroutine per call, and many answers to one write.
func (h *lockHandler) Pipeline(ctx context.Context, stream *connect.BidiStream[lockdv1.PipelineRequest, lockdv1.PipelineResponse]) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The calls' contexts end when the client goes away, not when the
	// stream ends for the node's own reasons (a reload of the credentials
	// ends streams with a token): then their waiters stay queued.
	callCtx, stopCalls := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCalls()
	p := &pipeline{
		h:       h,
		ctx:     callCtx,
		stop:    stopCalls,
		detach:  make(chan struct{}),
		open:    map[uint64]*openCall{},
		granted: map[uint64]grantRef{},
		results: make(chan *lockdv1.PipelineResult, maxPipelineBatch),
	}
	written := make(chan error, 1)
	go func() { written <- p.write(stream) }()

	// Receive on a goroutine of its own, so that the stream can end while
	// a Receive waits (when the server drains, or the credentials change).
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

	err := p.serve(ctx, reqs, received)
	switch {
	case errors.Is(err, io.EOF):
		err = nil // the client has said all it will: answer what is open
	case err == errShuttingDown:
		// The open calls end by themselves, their waiters left queued for
		// the client's retries on another node (as in Acquire).
	case errors.Is(context.Cause(ctx), errReloaded):
		close(p.detach) // the same, on this node
	default:
		// The client is gone, or broke the protocol: its open calls end
		// as a unary call's do when its client goes away.
		stopCalls()
	}
	p.calls.Wait()
	close(p.results)
	if werr := <-written; err == nil {
		err = werr
	}
	return err
}

// pipeline is one Pipeline stream's calls.
type pipeline struct {
	h       *lockHandler
	ctx     context.Context // every call's context derives from it
	stop    context.CancelFunc
	detach  chan struct{} // closed to end the waits but leave the waiters
	calls   sync.WaitGroup
	results chan *lockdv1.PipelineResult
	lastID  uint64 // ids only go up (read and written by serve alone)

	mu   sync.Mutex
	open map[uint64]*openCall
	// granted are the stream's last granted acquires, oldest first in
	// grantedIDs.
	granted    map[uint64]grantRef
	grantedIDs []uint64
}

// openCall is a call under way.
type openCall struct {
	cancel    context.CancelFunc
	cancelled bool // its client gave it up
}

// grantRef is what undoes a grant: its lease, request (and try of it) and
// waiter.
type grantRef struct {
	lease, request uint64
	attempt        uint32
	waiter         uint64
}

// serve starts the calls the client sends until the stream ends, and says
// why it did.
func (p *pipeline) serve(ctx context.Context, reqs <-chan *lockdv1.PipelineRequest, received <-chan error) error {
	for {
		select {
		case req := <-reqs:
			for _, c := range req.GetCalls() {
				if _, ok := c.GetCall().(*lockdv1.PipelineCall_Cancel); ok {
					p.cancel(c.GetId())
					continue
				}
				if c.GetId() <= p.lastID {
					return invalid("call id %d after %d: ids on a stream must go up", c.GetId(), p.lastID)
				}
				p.lastID = c.GetId()
				p.start(c)
			}
		case err := <-received:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-p.h.s.bg.Done():
			return errShuttingDown
		}
	}
}

// cancel gives up the call with id, as its client went away: an open call
// is cancelled, and an answered grant undone.
func (p *pipeline) cancel(id uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.open[id]; ok {
		c.cancelled = true
		c.cancel()
		return
	}
	if g, ok := p.granted[id]; ok {
		// The grant was answered before the cancel came: the caller never
		// saw it. Undo it as Acquire undoes a grant that wins the race with
		// its withdrawal (the holder hears of it as lost, should it have
		// taken the lock again meanwhile).
		delete(p.granted, id)
		p.h.s.cancelInBackground(p.ctx, g.lease, g.request, g.attempt, g.waiter)
	}
}

// start runs a call.
func (p *pipeline) start(c *lockdv1.PipelineCall) {
	id := c.GetId()
	var timeout time.Duration
	if t := c.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() <= 0 {
			p.reject(c, invalid("call %d: timeout %v is not a positive duration", id, t.AsDuration()))
			return
		}
		timeout = t.AsDuration()
	}
	ctx, cancel := context.WithCancel(p.ctx)
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(p.ctx, timeout)
	}
	p.mu.Lock()
	full := len(p.open) >= maxPipelineCalls
	if !full {
		p.open[id] = &openCall{cancel: cancel}
	}
	p.mu.Unlock()
	if full {
		cancel()
		p.reject(c, connect.NewError(connect.CodeResourceExhausted,
			fmt.Errorf("this stream has %d calls open, the most it may; wait for some to end, or open another stream", maxPipelineCalls)))
		return
	}
	p.calls.Add(1)
	go func() {
		defer p.calls.Done()
		res, waiter, err := p.run(ctx, c)
		p.mu.Lock()
		cancelled := p.open[id].cancelled
		delete(p.open, id)
		if a := c.GetAcquire(); err == nil && res.GetAcquire().GetGranted() {
			ref := grantRef{a.GetLeaseId(), a.GetRequestId(), a.GetAttempt(), waiter}
			switch {
			case cancelled:
				// Granted as the cancel came in: the client no longer
				// listens for the answer.
				p.h.s.cancelInBackground(p.ctx, ref.lease, ref.request, ref.attempt, ref.waiter)
				res, err = nil, connect.NewError(connect.CodeCanceled, errors.New("the call was cancelled"))
			case waiter != 0:
				p.rememberGrant(id, ref)
			}
		}
		p.mu.Unlock()
		cancel()
		p.answer(id, res, err)
	}()
}

// rememberGrant notes a granted acquire, forgetting the oldest beyond
// grantsRemembered. Call with p.mu held.
func (p *pipeline) rememberGrant(id uint64, g grantRef) {
	if len(p.grantedIDs) == grantsRemembered {
		delete(p.granted, p.grantedIDs[0])
		p.grantedIDs = p.grantedIDs[1:]
	}
	p.granted[id] = g
	p.grantedIDs = append(p.grantedIDs, id)
}

// procedureOf is the unary procedure a call stands for, for its metrics.
func procedureOf(c *lockdv1.PipelineCall) string {
	switch c.GetCall().(type) {
	case *lockdv1.PipelineCall_Acquire:
		return lockdv1connect.LockServiceAcquireProcedure
	case *lockdv1.PipelineCall_Release:
		return lockdv1connect.LockServiceReleaseProcedure
	default:
		return lockdv1connect.LockServicePipelineProcedure
	}
}

// reject answers a call refused before it ran, counting it as its unary
// twin's refusal is counted.
func (p *pipeline) reject(c *lockdv1.PipelineCall, err error) {
	p.h.s.metrics.rpc.WithLabelValues(procedureOf(c), codeLabel(err)).Observe(0)
	p.answer(c.GetId(), nil, err)
}

// run makes one call as its unary twin, with the same checks and metrics.
// waiter identifies a granted acquire's waiter.
func (p *pipeline) run(ctx context.Context, c *lockdv1.PipelineCall) (res *lockdv1.PipelineResult, waiter uint64, err error) {
	s := p.h.s
	procedure := procedureOf(c)
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error().Str("procedure", procedure).Interface("panic", r).Bytes("stack", debug.Stack()).Msg("pipelined call panicked")
			res, err = nil, connect.NewError(connect.CodeInternal, fmt.Errorf("internal error in %s", procedure))
		}
		s.metrics.rpc.WithLabelValues(procedure, codeLabel(err)).Observe(time.Since(start).Seconds())
	}()
	switch call := c.GetCall().(type) {
	case *lockdv1.PipelineCall_Acquire:
		if err := p.authorize(ctx, procedure, call.Acquire); err != nil {
			return nil, 0, err
		}
		r, waiter, err := p.h.acquire(ctx, call.Acquire, p.detach)
		if err != nil {
			return nil, 0, err
		}
		return &lockdv1.PipelineResult{Result: &lockdv1.PipelineResult_Acquire{Acquire: r}}, waiter, nil
	case *lockdv1.PipelineCall_Release:
		if err := p.authorize(ctx, procedure, call.Release); err != nil {
			return nil, 0, err
		}
		r, err := p.h.Release(ctx, connect.NewRequest(call.Release))
		if err != nil {
			return nil, 0, err
		}
		return &lockdv1.PipelineResult{Result: &lockdv1.PipelineResult_Release{Release: r.Msg}}, 0, nil
	default:
		return nil, 0, invalid("call %d names no call (acquire, release or cancel)", c.GetId())
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
		res = &lockdv1.PipelineResult{Result: &lockdv1.PipelineResult_Error{Error: pipelineError(err)}}
	}
	res.Id = id
	p.results <- res
}

// pipelineError is err as the unary call would have answered it.
func pipelineError(err error) *lockdv1.PipelineError {
	var ce *connect.Error
	if !errors.As(toConnect(err), &ce) {
		return &lockdv1.PipelineError{Code: connect.CodeInternal.String(), Message: err.Error()}
	}
	return &lockdv1.PipelineError{Code: ce.Code().String(), Message: ce.Message(), LeaderUrl: ce.Meta().Get(LeaderHeader)}
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
		// With other calls open, let those that are running post their
		// answers first: the applier answers a whole batch of entries at
		// once, and one message for all of them is one write, not many. A
		// lone call's answer is not kept waiting.
		p.mu.Lock()
		others := len(p.open) > 0
		p.mu.Unlock()
		if others {
			runtime.Gosched()
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
