package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Peer paths, served on the node's one port beside the client API.
const (
	streamPath   = "/lockd.peer.v1/stream"
	snapshotPath = "/lockd.peer.v1/snapshot"
	// PeerPathPrefix is the path prefix of every peer endpoint; mount
	// Node.PeerHandler under it.
	PeerPathPrefix = "/lockd.peer.v1/"

	headerCluster = "Lockd-Cluster-Id"
	headerFrom    = "Lockd-From"
)

const (
	peerQueueLen     = 4096     // messages queued per peer before new ones are dropped
	maxBatch         = 512      // messages written per flush
	maxMessageBytes  = 64 << 20 // one framed message; entries are bounded far below this
	maxSnapshotBytes = 4 << 30
	minBackoff       = 20 * time.Millisecond
	maxBackoff       = time.Second
)

// Faults decides the fate of outgoing peer traffic. Tests use it to drop,
// delay and partition; production leaves it nil.
type Faults interface {
	// Outbound is called before a batch of messages (or a snapshot) goes from
	// one member to another. drop discards it, as a lossy network would;
	// delay holds it, and everything queued behind it, back.
	Outbound(from, to uint64) (drop bool, delay time.Duration)
}

// transport carries raft messages between members over HTTP/2. Each peer has
// a bounded queue drained by one goroutine that keeps a long-lived streaming
// request open and writes length-prefixed batches into it; snapshots go in a
// request of their own so they never hold up heartbeats.
type transport struct {
	id, cluster  uint64
	client       *http.Client
	faults       Faults
	log          zerolog.Logger
	writeTimeout time.Duration // a stream that cannot take a batch this long is torn down

	deliver     func(ctx context.Context, m *raftpb.Message) error // into the raft loop
	unreachable func(id uint64)
	snapshotted func(id uint64, status raft.SnapshotStatus)

	mu    sync.Mutex
	peers map[uint64]*peerSender
	wg    sync.WaitGroup

	// stopped is cancelled by close, which ends the incoming streams too.
	stopped context.Context
	stop    context.CancelFunc
}

type peerSender struct {
	t     *transport
	id    uint64
	url   string
	queue chan *raftpb.Message
	ctx   context.Context
	stop  context.CancelFunc
}

func newTransport(id, cluster uint64, faults Faults, writeTimeout time.Duration, log zerolog.Logger) *transport {
	hc := &http.Transport{
		Protocols:           new(http.Protocols),
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     time.Minute,
	}
	hc.Protocols.SetUnencryptedHTTP2(true)
	// Ping idle connections, so one to a peer that vanished (no reset, no
	// FIN) is noticed in a few election timeouts rather than TCP's minutes.
	hc.HTTP2 = &http.HTTP2Config{SendPingTimeout: writeTimeout, PingTimeout: writeTimeout}
	stopped, stop := context.WithCancel(context.Background())
	return &transport{
		stopped:      stopped,
		stop:         stop,
		id:           id,
		cluster:      cluster,
		client:       &http.Client{Transport: hc},
		faults:       faults,
		log:          log,
		writeTimeout: writeTimeout,
		peers:        map[uint64]*peerSender{},
	}
}

// setPeer starts or updates the sender for a peer.
func (t *transport) setPeer(id uint64, url string) {
	if id == t.id {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[id]; ok {
		if p.url == url {
			return
		}
		p.stop()
		delete(t.peers, id)
	}
	if t.peers == nil { // closed
		return
	}
	ctx, stop := context.WithCancel(t.stopped)
	p := &peerSender{t: t, id: id, url: url, queue: make(chan *raftpb.Message, peerQueueLen), ctx: ctx, stop: stop}
	t.peers[id] = p
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		p.run()
	}()
}

func (t *transport) removePeer(id uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[id]; ok {
		p.stop()
		delete(t.peers, id)
	}
}

func (t *transport) close() {
	t.stop()
	t.mu.Lock()
	for _, p := range t.peers {
		p.stop()
	}
	t.peers = nil
	t.mu.Unlock()
	t.wg.Wait()
	t.client.CloseIdleConnections()
}

// send queues messages for their peers without blocking the raft loop. A
// full queue drops the message and tells raft the peer is unreachable, which
// makes the leader probe instead of streaming into the void.
func (t *transport) send(msgs []*raftpb.Message) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range msgs {
		to := m.GetTo()
		p, ok := t.peers[to]
		if !ok {
			continue
		}
		if m.GetType() == raftpb.MessageType_MsgSnap {
			t.wg.Add(1)
			go func() {
				defer t.wg.Done()
				p.sendSnapshot(m)
			}()
			continue
		}
		select {
		case p.queue <- m:
		default:
			t.unreachable(to)
		}
	}
}

func (p *peerSender) run() {
	var (
		batch   []*raftpb.Message
		s       *stream
		backoff = minBackoff
		buf     []byte
	)
	defer func() {
		if s != nil {
			s.close(errors.New("peer stopped"))
		}
	}()
	for {
		batch = batch[:0]
		select {
		case <-p.ctx.Done():
			return
		case m := <-p.queue:
			batch = append(batch, m)
		}
	drain:
		for len(batch) < maxBatch {
			select {
			case m := <-p.queue:
				batch = append(batch, m)
			default:
				break drain
			}
		}
		if f := p.t.faults; f != nil {
			drop, delay := f.Outbound(p.t.id, p.id)
			if delay > 0 && !sleepCtx(p.ctx, delay) {
				return
			}
			if drop {
				continue
			}
		}
		if s == nil {
			s = p.open()
		}
		var err error
		buf, err = s.write(buf[:0], batch, p.t.writeTimeout)
		if err == nil {
			backoff = minBackoff
			continue
		}
		s.close(err)
		s = nil
		if p.ctx.Err() != nil {
			return
		}
		p.t.log.Debug().Err(err).Str("peer", strconv.FormatUint(p.id, 16)).Msg("peer stream failed")
		p.t.unreachable(p.id)
		if !sleepCtx(p.ctx, backoff) {
			return
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// stream is one long-lived HTTP/2 request whose body carries message frames.
type stream struct {
	pw     *io.PipeWriter
	w      *bufio.Writer
	cancel context.CancelFunc
}

func (p *peerSender) open() *stream {
	ctx, cancel := context.WithCancel(p.ctx)
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url+streamPath, pr)
	if err != nil {
		pw.CloseWithError(err)
	} else {
		p.t.header(req)
		go func() {
			resp, err := p.t.client.Do(req)
			if err == nil {
				if resp.StatusCode != http.StatusOK {
					msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
					err = fmt.Errorf("peer refused stream: %s: %s", resp.Status, bytes.TrimSpace(msg))
				} else {
					// The peer answers only when it stops reading.
					_, err = io.Copy(io.Discard, resp.Body)
					if err == nil {
						err = errors.New("peer closed stream")
					}
				}
				resp.Body.Close()
			}
			pw.CloseWithError(err)
		}()
	}
	return &stream{pw: pw, w: bufio.NewWriterSize(pw, 64<<10), cancel: cancel}
}

func (s *stream) write(buf []byte, batch []*raftpb.Message, timeout time.Duration) ([]byte, error) {
	// A peer that stops reading (paused, or a dead connection TCP has not
	// noticed) would block the write forever; the timer tears it down.
	timer := time.AfterFunc(timeout, func() { s.pw.CloseWithError(errors.New("peer write timed out")) })
	defer timer.Stop()
	for _, m := range batch {
		var err error
		buf = buf[:0]
		buf = binary.AppendUvarint(buf, uint64(proto.Size(m)))
		buf, err = proto.MarshalOptions{}.MarshalAppend(buf, m)
		if err != nil {
			return buf, err
		}
		if _, err := s.w.Write(buf); err != nil {
			return buf, err
		}
	}
	return buf, s.w.Flush()
}

func (s *stream) close(err error) {
	s.pw.CloseWithError(err)
	s.cancel()
}

func (p *peerSender) sendSnapshot(m *raftpb.Message) {
	status := raft.SnapshotFailure
	defer func() { p.t.snapshotted(p.id, status) }()
	if f := p.t.faults; f != nil {
		drop, delay := f.Outbound(p.t.id, p.id)
		if drop || !sleepCtx(p.ctx, delay) {
			return
		}
	}
	data, err := proto.Marshal(m)
	if err != nil {
		return
	}
	// A snapshot that does not arrive in time is reported as failed, so the
	// leader tries again rather than waiting on a dead connection: a minute,
	// plus a second per 10 MiB.
	ctx, cancel := context.WithTimeout(p.ctx, time.Minute+time.Duration(len(data)/(10<<20))*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url+snapshotPath, bytes.NewReader(data))
	if err != nil {
		return
	}
	p.t.header(req)
	start := time.Now()
	resp, err := p.t.client.Do(req)
	if err != nil {
		p.t.log.Warn().Err(err).Str("peer", strconv.FormatUint(p.id, 16)).Msg("sending snapshot failed")
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		status = raft.SnapshotFinish
		p.t.log.Info().Str("peer", strconv.FormatUint(p.id, 16)).Uint64("index", m.GetSnapshot().GetMetadata().GetIndex()).
			Int("bytes", len(data)).Dur("took", time.Since(start)).Msg("sent snapshot")
	}
}

func (t *transport) header(req *http.Request) {
	req.Header.Set(headerCluster, strconv.FormatUint(t.cluster, 16))
	req.Header.Set(headerFrom, strconv.FormatUint(t.id, 16))
	req.Header.Set("Content-Type", "application/octet-stream")
}

// ServeHTTP receives peer traffic.
func (t *transport) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "peer endpoints take POST", http.StatusMethodNotAllowed)
		return
	}
	if got := r.Header.Get(headerCluster); got != strconv.FormatUint(t.cluster, 16) {
		http.Error(w, fmt.Sprintf("cluster id mismatch: this node is in cluster %x, the sender in %q", t.cluster, got), http.StatusForbidden)
		return
	}
	switch r.URL.Path {
	case streamPath:
		t.serveStream(w, r)
	case snapshotPath:
		t.serveSnapshot(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (t *transport) serveStream(w http.ResponseWriter, r *http.Request) {
	// A stream lives as long as both nodes do; when this one stops, closing
	// the body ends the read below.
	defer context.AfterFunc(t.stopped, func() { r.Body.Close() })()
	br := bufio.NewReaderSize(r.Body, 64<<10)
	var buf []byte
	for {
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return // the sender went away; it reconnects
		}
		if n > maxMessageBytes {
			http.Error(w, fmt.Sprintf("message of %d bytes exceeds the limit of %d", n, maxMessageBytes), http.StatusRequestEntityTooLarge)
			return
		}
		if uint64(cap(buf)) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(br, buf); err != nil {
			return
		}
		m := new(raftpb.Message)
		if err := proto.Unmarshal(buf, m); err != nil {
			http.Error(w, "bad message: "+err.Error(), http.StatusBadRequest)
			return
		}
		if m.GetTo() != t.id {
			http.Error(w, fmt.Sprintf("message for %x reached %x", m.GetTo(), t.id), http.StatusBadRequest)
			return
		}
		if err := t.deliver(r.Context(), m); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
}

func (t *transport) serveSnapshot(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxSnapshotBytes+1))
	if err != nil {
		http.Error(w, "reading snapshot: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(data) > maxSnapshotBytes {
		http.Error(w, "snapshot too large", http.StatusRequestEntityTooLarge)
		return
	}
	m := new(raftpb.Message)
	if err := proto.Unmarshal(data, m); err != nil || m.GetType() != raftpb.MessageType_MsgSnap || m.GetTo() != t.id {
		http.Error(w, "bad snapshot message", http.StatusBadRequest)
		return
	}
	if err := t.deliver(r.Context(), m); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// sleepCtx sleeps for d and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
