package lockd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"github.com/lockd-io/lockd/proto/lockd/v1/lockdv1connect"
)

// leaderHeader names the leader on Unavailable answers.
const leaderHeader = "Lockd-Leader"

// Client is a connection to a lockd cluster. It is safe for concurrent use.
type Client struct {
	opts      options
	mu        sync.Mutex
	endpoints []*endpoint
	preferred atomic.Int32 // index of the endpoint calls go to first
	finding   atomic.Bool  // findLeader is running

	keepAlives keepAlives // the sessions' keep-alives, sent together
}

type endpoint struct {
	url      string
	lease    lockdv1connect.LeaseServiceClient
	lock     lockdv1connect.LockServiceClient
	election lockdv1connect.ElectionServiceClient
	cluster  lockdv1connect.ClusterServiceClient

	pipeMu     sync.Mutex
	pipe       *pipeline // the stream of acquires and releases, once opened
	unary      bool      // every call unary (WithUnaryCalls, or the client closed)
	unaryUntil time.Time // the node did not serve Pipeline: unary until then
}

// pipeline is the endpoint's open call stream, opened if need be; nil if
// calls are unary.
func (e *endpoint) pipeline() *pipeline {
	e.pipeMu.Lock()
	defer e.pipeMu.Unlock()
	if e.unary || time.Now().Before(e.unaryUntil) {
		return nil
	}
	if e.pipe == nil {
		e.pipe = newPipeline(e)
	}
	return e.pipe
}

// dropPipeline forgets a stream that ended, so that the next call opens
// another; unary says the node does not serve Pipeline.
func (e *endpoint) dropPipeline(p *pipeline, unary bool) {
	e.pipeMu.Lock()
	defer e.pipeMu.Unlock()
	if e.pipe == p {
		e.pipe = nil
	}
	if unary {
		e.unaryUntil = time.Now().Add(unaryFor)
	}
}

// close ends the endpoint's call stream, if it has one, for good.
func (e *endpoint) close() {
	e.pipeMu.Lock()
	p := e.pipe
	e.unary = true
	e.pipeMu.Unlock()
	if p != nil {
		p.close()
	}
}

// pipelined makes a call on the endpoint's stream; errUnary says to make
// it unary instead.
func (e *endpoint) pipelined(ctx context.Context, c *lockdv1.PipelineCall) (*lockdv1.PipelineResult, error) {
	for {
		p := e.pipeline()
		if p == nil {
			return nil, errUnary
		}
		r, err := p.call(ctx, c)
		if err != errIdle {
			return r, err
		}
	}
}

// acquire calls Acquire on the node, pipelined when it can be.
func (e *endpoint) acquire(ctx context.Context, req *lockdv1.AcquireRequest) (*lockdv1.AcquireResponse, error) {
	return callEither(ctx, e, &lockdv1.PipelineCall{Call: &lockdv1.PipelineCall_Acquire{Acquire: req}},
		(*lockdv1.PipelineResult).GetAcquire, req, e.lock.Acquire)
}

// release calls Release on the node, pipelined when it can be.
func (e *endpoint) release(ctx context.Context, req *lockdv1.ReleaseRequest) (*lockdv1.ReleaseResponse, error) {
	return callEither(ctx, e, &lockdv1.PipelineCall{Call: &lockdv1.PipelineCall_Release{Release: req}},
		(*lockdv1.PipelineResult).GetRelease, req, e.lock.Release)
}

// callEither makes a call on the node's stream (c, whose answer answerOf
// picks out), or unary (req to unary) when it cannot be pipelined.
func callEither[Req, Resp any](ctx context.Context, e *endpoint, c *lockdv1.PipelineCall,
	answerOf func(*lockdv1.PipelineResult) *Resp,
	req *Req, unary func(context.Context, *connect.Request[Req]) (*connect.Response[Resp], error),
) (*Resp, error) {
	r, err := e.pipelined(ctx, c)
	switch {
	case errors.Is(err, errUnary):
		resp, err := unary(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return resp.Msg, nil
	case err != nil:
		return nil, err
	case answerOf(r) == nil:
		return nil, fmt.Errorf("lockd: %s answered %T with %T", e.url, req, r.GetResult())
	}
	return answerOf(r), nil
}

type options struct {
	unary      bool
	httpClient *http.Client
	tls        *tls.Config
	minBackoff time.Duration
	maxBackoff time.Duration
	connect    []connect.ClientOption
}

// Option configures a Client.
type Option interface{ apply(*options) }

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithHTTPClient sets the HTTP client; it must speak HTTP/2 (h2c for plain
// http:// endpoints). The default does.
func WithHTTPClient(c *http.Client) Option {
	return optionFunc(func(o *options) { o.httpClient = c })
}

// WithBackoff sets the pause between rounds of retries over the endpoints,
// doubling from min to max. Default 50ms to 1s.
func WithBackoff(min, max time.Duration) Option {
	return optionFunc(func(o *options) { o.minBackoff, o.maxBackoff = min, max })
}

// WithTLS makes the client speak HTTPS, trusting the servers config trusts
// (RootCAs) and presenting its certificate, if it has one, to clusters that
// require client certificates. Endpoints given as host:port become
// https://host:port; an http:// endpoint is an error, as is WithTLS with
// WithHTTPClient (whose transport has the TLS configuration then).
func WithTLS(config *tls.Config) Option {
	return optionFunc(func(o *options) { o.tls = config })
}

// WithToken sends a bearer token with every call, for clusters that
// authenticate callers with tokens.
func WithToken(token string) Option {
	return optionFunc(func(o *options) {
		o.connect = append(o.connect, connect.WithInterceptors(bearer("Bearer "+token)))
	})
}

// bearer adds an Authorization header to every call.
type bearer string

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", string(b))
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", string(b))
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// WithUnaryCalls makes every call a unary RPC. By default acquires and
// releases share one LockService.Pipeline stream per node, which costs a
// fraction of a unary call each; use this behind a proxy that does not
// carry bidirectional HTTP/2 streams.
func WithUnaryCalls() Option {
	return optionFunc(func(o *options) { o.unary = true })
}

// WithGRPC makes the client speak gRPC instead of the Connect protocol.
func WithGRPC() Option {
	return optionFunc(func(o *options) { o.connect = append(o.connect, connect.WithGRPC()) })
}

// New returns a client of the cluster whose nodes are at endpoints
// ("host:port" or URLs).
func New(endpoints []string, opts ...Option) (*Client, error) {
	o := options{minBackoff: 50 * time.Millisecond, maxBackoff: time.Second}
	for _, opt := range opts {
		opt.apply(&o)
	}
	if o.tls != nil && o.httpClient != nil {
		return nil, errors.New("lockd: WithTLS and WithHTTPClient: configure TLS on the HTTP client's transport")
	}
	if o.httpClient == nil {
		tr := &http.Transport{Protocols: new(http.Protocols), MaxIdleConnsPerHost: 8, IdleConnTimeout: time.Minute}
		tr.Protocols.SetUnencryptedHTTP2(true)
		tr.Protocols.SetHTTP2(true)
		// Ping a connection that has gone quiet, so a node that hangs (a
		// stopped process, a dead host) is given up on within seconds and
		// calls fail over, long polls included.
		tr.HTTP2 = &http.HTTP2Config{SendPingTimeout: time.Second, PingTimeout: time.Second}
		tr.TLSClientConfig = o.tls
		o.httpClient = &http.Client{Transport: tr}
	}
	c := &Client{opts: o}
	for _, e := range endpoints {
		if e = strings.TrimSpace(e); e != "" {
			if o.tls != nil && strings.HasPrefix(e, "http://") {
				return nil, fmt.Errorf("lockd: endpoint %s is plain http, but the client has WithTLS", e)
			}
			c.add(e)
		}
	}
	if len(c.endpoints) == 0 {
		return nil, errors.New("lockd: no endpoints")
	}
	c.refindLeader()
	return c, nil
}

// findLeader points the client at the raft leader: any node serves any call,
// but a write sent to a follower costs a forward to the leader and a wait
// for the follower to learn the commit.
func (c *Client) findLeader() {
	defer c.finding.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil || st.GetLeaderUrl() == "" {
		return
	}
	c.preferred.Store(int32(c.add(st.GetLeaderUrl())))
}

// refindLeader starts findLeader unless it is already running.
func (c *Client) refindLeader() {
	if c.count() > 1 && c.finding.CompareAndSwap(false, true) {
		go c.findLeader()
	}
}

func (c *Client) normalize(url string) string {
	if !strings.Contains(url, "://") {
		if c.opts.tls != nil {
			url = "https://" + url
		} else {
			url = "http://" + url
		}
	}
	return strings.TrimRight(url, "/")
}

// add adds an endpoint (once) and returns its index.
func (c *Client) add(url string) int {
	url = c.normalize(url)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, e := range c.endpoints {
		if e.url == url {
			return i
		}
	}
	hc, co := wholeMessages{c.opts.httpClient}, c.opts.connect
	c.endpoints = append(c.endpoints, &endpoint{
		url:      url,
		lease:    lockdv1connect.NewLeaseServiceClient(hc, url, co...),
		lock:     lockdv1connect.NewLockServiceClient(hc, url, co...),
		election: lockdv1connect.NewElectionServiceClient(hc, url, co...),
		cluster:  lockdv1connect.NewClusterServiceClient(hc, url, co...),
		unary:    c.opts.unary,
	})
	return len(c.endpoints) - 1
}

func (c *Client) endpoint(i int) *endpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.endpoints[i%len(c.endpoints)]
}

func (c *Client) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.endpoints)
}

// Close ends the client's call streams and releases its idle connections.
func (c *Client) Close() {
	c.mu.Lock()
	endpoints := append([]*endpoint(nil), c.endpoints...)
	c.mu.Unlock()
	for _, e := range endpoints {
		e.close()
	}
	c.opts.httpClient.CloseIdleConnections()
}

// retryable reports whether err means the node could not serve the call
// (down, no leader, draining), so that another node, or the same one later,
// may. ctx is the caller's: a cancellation that is not the caller's is a
// broken connection (a node killed mid-call shows up so).
func retryable(ctx context.Context, err error) bool {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return false
	}
	switch ce.Code() {
	case connect.CodeUnavailable:
		return true
	case connect.CodeCanceled:
		return ctx.Err() == nil
	case connect.CodeUnknown, connect.CodeInternal:
		// A broken connection, not an answer from a server.
		return !connect.IsWireError(ce)
	}
	return false
}

// do runs call against the cluster: first the endpoint that answered last,
// then the others, in rounds with backoff, until call succeeds, fails with
// an answer that another node would give too, or ctx ends. An Unavailable
// answer that names the leader sends the next try there.
func (c *Client) do(ctx context.Context, call func(ctx context.Context, e *endpoint) error) error {
	backoff := c.opts.minBackoff
	for {
		start := int(c.preferred.Load())
		n := c.count()
		var err error
		for i := range n {
			idx := (start + i) % n
			err = call(ctx, c.endpoint(idx))
			if err == nil || !retryable(ctx, err) {
				if i > 0 {
					// Failed over: stay with the node that answered, and
					// look for the new leader, which it may not be.
					c.preferred.Store(int32(idx))
					c.refindLeader()
				}
				return err
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ce *connect.Error
			if errors.As(err, &ce) {
				if leader := ce.Meta().Get(leaderHeader); leader != "" {
					c.preferred.Store(int32(c.add(leader)))
					break
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, c.opts.maxBackoff)
	}
}

// CheckFence reports, linearizably, whether token is held on lock name
// right now.
func (c *Client) CheckFence(ctx context.Context, name string, token uint64) (bool, error) {
	var valid bool
	err := c.do(ctx, func(ctx context.Context, e *endpoint) error {
		r, err := e.lock.CheckFence(ctx, connect.NewRequest(&lockdv1.CheckFenceRequest{Name: name, Token: token}))
		if err == nil {
			valid = r.Msg.GetValid()
		}
		return err
	})
	return valid, err
}

// Describe returns a lock's holders, its queue in order, and any delay.
func (c *Client) Describe(ctx context.Context, name string) (*lockdv1.DescribeResponse, error) {
	var resp *lockdv1.DescribeResponse
	err := c.do(ctx, func(ctx context.Context, e *endpoint) error {
		r, err := e.lock.Describe(ctx, connect.NewRequest(&lockdv1.DescribeRequest{Name: name}))
		if err == nil {
			resp = r.Msg
		}
		return err
	})
	return resp, err
}

// List returns a page of the locks whose names start with prefix; pass the
// returned token to get the next page ("" when there is none).
func (c *Client) List(ctx context.Context, prefix, pageToken string, limit uint32) ([]*lockdv1.DescribeResponse, string, error) {
	var resp *lockdv1.ListResponse
	err := c.do(ctx, func(ctx context.Context, e *endpoint) error {
		r, err := e.lock.List(ctx, connect.NewRequest(&lockdv1.ListRequest{Prefix: prefix, PageToken: pageToken, Limit: limit}))
		if err == nil {
			resp = r.Msg
		}
		return err
	})
	if err != nil {
		return nil, "", err
	}
	return resp.GetLocks(), resp.GetNextPageToken(), nil
}

// Status returns the status of the first node that answers.
func (c *Client) Status(ctx context.Context) (*lockdv1.StatusResponse, error) {
	var resp *lockdv1.StatusResponse
	err := c.do(ctx, func(ctx context.Context, e *endpoint) error {
		r, err := e.cluster.Status(ctx, connect.NewRequest(&lockdv1.StatusRequest{}))
		if err == nil {
			resp = r.Msg
		}
		return err
	})
	return resp, err
}

// Leases returns a page of leases in id order; pass the returned token to
// get the next page ("" when there is none).
func (c *Client) Leases(ctx context.Context, pageToken string, limit uint32) ([]*lockdv1.Lease, string, error) {
	var resp *lockdv1.ListLeasesResponse
	err := c.do(ctx, func(ctx context.Context, e *endpoint) error {
		r, err := e.lease.List(ctx, connect.NewRequest(&lockdv1.ListLeasesRequest{PageToken: pageToken, Limit: limit}))
		if err == nil {
			resp = r.Msg
		}
		return err
	})
	if err != nil {
		return nil, "", err
	}
	return resp.GetLeases(), resp.GetNextPageToken(), nil
}

// Revoke ends a lease at once, releasing everything it holds (an admin's
// tool; a session's owner calls Session.Close).
func (c *Client) Revoke(ctx context.Context, leaseID uint64) error {
	return c.do(ctx, func(ctx context.Context, e *endpoint) error {
		_, err := e.lease.Revoke(ctx, connect.NewRequest(&lockdv1.RevokeRequest{LeaseId: leaseID}))
		return err
	})
}
