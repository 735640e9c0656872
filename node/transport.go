package node

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
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

// commitHold is how long an append without entries waits for company. The
// leader sends one to every follower each time its commit index moves,
// only to say so; under load the next append says it too, a client's round
// trip later, and the first need not cost a write here and, on the
// follower, a read, a pass of its raft loop and a write to its disk queue.
// Idle, a follower learns of a commit this much later (a heartbeat or a
// read waits no longer: they are not held).
const commitHold = 2 * time.Millisecond

// Faults decides the fate of outgoing peer traffic. Tests use it to drop,
// delay and partition; production leaves it nil.
type Faults interface {
	// Outbound is called before a batch of messages (or a snapshot) goes from
	// one member to another. drop discards it, as a lossy network would;
	// delay holds it, and everything queued behind it, back.
	Outbound(from, to uint64) (drop bool, delay time.Duration)
}

// DiskFaults slows a node's disk, when its Faults implement it too: each
// synced write of the log waits WriteDelay first, as on a slow or busy
// device.
type DiskFaults interface {
	WriteDelay() time.Duration
}

// transport carries raft messages between members on the node's one port.
// Each peer has a bounded queue drained by one goroutine that keeps a stream
// open to it (an HTTP/1.1 request upgraded to a raw connection) and writes
// length-prefixed batches into it; snapshots go in HTTP/2 requests of their
// own so they never hold up heartbeats. The server must accept HTTP/1.1 for
// the streams and HTTP/2 (h2c) for snapshots.
type transport struct {
	id, cluster  uint64
	client       *http.Client
	tls          *tls.Config // nil: plain TCP
	faults       Faults
	log          zerolog.Logger
	writeTimeout time.Duration // a stream that cannot take a batch this long is torn down
	commitHold   time.Duration // see commitHold; tests lengthen it

	deliver     func(ctx context.Context, m *raftpb.Message) error // into the raft loop
	unreachable func(id uint64)
	gone        func(id uint64) // the peer's port refuses connections: its process is gone
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

func newTransport(id, cluster uint64, faults Faults, tlsConfig *tls.Config, writeTimeout time.Duration, log zerolog.Logger) *transport {
	hc := &http.Transport{
		Protocols:           new(http.Protocols),
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     time.Minute,
		TLSClientConfig:     tlsConfig,
	}
	hc.Protocols.SetUnencryptedHTTP2(true)
	hc.Protocols.SetHTTP2(true)
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
		commitHold:   commitHold,
		tls:          tlsConfig,
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

// removePeer stops sending to a member that left the cluster: at once for
// new messages, but its sender goes on for a grace period to flush what is
// queued, since the loop queues the commit that removes a member in the
// same turn as it applies the removal, and a member that never learns of
// its removal cannot mark its data dir as removed.
func (t *transport) removePeer(id uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[id]; ok {
		delete(t.peers, id)
		time.AfterFunc(removeGrace, p.stop)
	}
}

// removeGrace is how long a removed member's sender flushes its queue.
const removeGrace = time.Second

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
		hold    *time.Timer
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
		batch = p.drain(batch)
		if commitNewsOnly(batch) {
			if hold == nil {
				hold = time.NewTimer(p.t.commitHold)
			} else {
				hold.Reset(p.t.commitHold)
			}
			select {
			case <-p.ctx.Done():
				return
			case <-hold.C:
			case m := <-p.queue:
				hold.Stop()
				batch = p.drain(append(batch, m))
			}
		}
		batch = dropSuperseded(batch)
		if f := p.t.faults; f != nil {
			drop, delay := f.Outbound(p.t.id, p.id)
			if delay > 0 && !sleepCtx(p.ctx, delay) {
				return
			}
			if drop {
				continue
			}
		}
		var err error
		if s == nil {
			s, err = p.open()
		}
		if err == nil {
			buf, err = s.write(buf[:0], batch, p.t.writeTimeout)
			if err == nil {
				backoff = minBackoff
				continue
			}
			s.close(err)
			s = nil
		}
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

// drain adds what is queued to batch, up to maxBatch messages.
func (p *peerSender) drain(batch []*raftpb.Message) []*raftpb.Message {
	for len(batch) < maxBatch {
		select {
		case m := <-p.queue:
			batch = append(batch, m)
		default:
			return batch
		}
	}
	return batch
}

// isCommitNews reports whether m is an append without entries, which says
// no more than the leader's commit index (or probes a follower, which a
// later append does as well).
func isCommitNews(m *raftpb.Message) bool {
	return m.GetType() == raftpb.MessageType_MsgApp && len(m.GetEntries()) == 0
}

// commitNewsOnly reports whether batch is commit news and nothing else.
func commitNewsOnly(batch []*raftpb.Message) bool {
	for _, m := range batch {
		if !isCommitNews(m) {
			return false
		}
	}
	return len(batch) > 0
}

// dropSuperseded removes from batch each append without entries that the
// next append after it in the batch says all of. A follower commits
// min(Commit, Index+len(Entries)) of an append it accepts, and ignores one
// whose Index is below its commit; so the later append must be of the same
// term, with Commit and Index at least the earlier one's. (A leader that
// falls back to probing a follower sends a lower Index: that keeps both.)
func dropSuperseded(batch []*raftpb.Message) []*raftpb.Message {
	var term, commit, index uint64 // of the last append seen, walking back
	dropped := false
	for i := len(batch) - 1; i >= 0; i-- {
		m := batch[i]
		if m.GetType() != raftpb.MessageType_MsgApp {
			continue
		}
		if isCommitNews(m) && term != 0 && m.GetTerm() == term &&
			m.GetCommit() <= commit && m.GetIndex() <= index {
			batch[i], dropped = nil, true
			continue
		}
		term, commit, index = m.GetTerm(), m.GetCommit(), m.GetIndex()
	}
	if !dropped {
		return batch
	}
	kept := batch[:0]
	for _, m := range batch {
		if m != nil {
			kept = append(kept, m)
		}
	}
	return kept
}

// A stream is one TCP connection per direction and peer, carrying
// length-prefixed message frames. It starts as an HTTP/1.1 request on the
// node's one port and is upgraded to a raw connection, so that a message
// costs one write on one side and one read on the other, without the
// goroutine handoffs of an HTTP/2 request body: on the commit path this is
// the difference between ~40µs and ~150µs a hop.
type stream struct {
	conn net.Conn
	w    *bufio.Writer
}

// upgradeProtocol names the peer stream protocol in the Upgrade header.
const upgradeProtocol = "lockd-raft/1"

// checkScheme refuses a peer URL whose scheme does not fit this member:
// https needs a TLS configuration, and a member with one talks TLS only.
func (t *transport) checkScheme(peerURL string) error {
	https := strings.HasPrefix(peerURL, "https://")
	switch {
	case https && t.tls == nil:
		return fmt.Errorf("peer URL %s is https, but this member has no TLS configuration", peerURL)
	case !https && t.tls != nil:
		return fmt.Errorf("peer URL %s is plain http; a member with TLS talks to its peers only over TLS", peerURL)
	}
	return nil
}

// open dials the peer and upgrades the connection to a stream.
func (p *peerSender) open() (*stream, error) {
	if err := p.t.checkScheme(p.url); err != nil {
		return nil, err
	}
	u, err := url.Parse(p.url)
	if err != nil {
		return nil, err
	}
	host := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	d := &net.Dialer{Timeout: p.t.writeTimeout, KeepAliveConfig: peerKeepAlive}
	var conn net.Conn
	if p.t.tls != nil {
		// HTTP/1.1 by ALPN: the stream is an upgraded HTTP/1.1 request.
		cfg := p.t.tls.Clone()
		cfg.NextProtos = []string{"http/1.1"}
		td := tls.Dialer{NetDialer: d, Config: cfg}
		conn, err = td.DialContext(p.ctx, "tcp", host)
	} else {
		conn, err = d.DialContext(p.ctx, "tcp", host)
	}
	if err != nil {
		return nil, err
	}
	// The handshake must finish in time, like any write.
	conn.SetDeadline(time.Now().Add(p.t.writeTimeout))
	req, _ := http.NewRequest(http.MethodPost, p.url+streamPath, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", upgradeProtocol)
	p.t.header(req)
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		conn.Close()
		return nil, fmt.Errorf("peer refused stream: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	conn.SetDeadline(time.Time{})
	s := &stream{conn: conn, w: bufio.NewWriterSize(conn, 64<<10)}
	// The peer never writes on a stream; a read returns only when the
	// connection ends, and then the next write fails at once.
	go func() {
		io.Copy(io.Discard, br)
		conn.Close()
		p.probe(host)
	}()
	return s, nil
}

// probe checks, after a stream to the peer ended, whether anything still
// listens on its port. A refused connection means the peer's process is
// gone (killed, crashed), which the node can act on at once instead of
// waiting out an election timeout of silence. A peer that is merely slow,
// paused or cut off does not refuse, and is left to raft's timeouts.
func (p *peerSender) probe(host string) {
	if p.ctx.Err() != nil || p.t.gone == nil {
		return
	}
	// Twice, a moment apart: a process that is exiting may close its
	// streams a little before its listener.
	for range 2 {
		d := net.Dialer{Timeout: p.t.writeTimeout}
		conn, err := d.DialContext(p.ctx, "tcp", host)
		if errors.Is(err, syscall.ECONNREFUSED) {
			p.t.gone(p.id)
			return
		}
		if conn != nil {
			conn.Close()
		}
		if !sleepCtx(p.ctx, 50*time.Millisecond) {
			return
		}
	}
}

// peerKeepAlive notices a peer that vanished without a reset or FIN (a
// dead host, a partition) within seconds rather than TCP's minutes.
var peerKeepAlive = net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 3}

func (s *stream) write(buf []byte, batch []*raftpb.Message, timeout time.Duration) ([]byte, error) {
	// A peer that stops reading (paused, or a dead connection TCP has not
	// noticed) would block the write forever; the deadline tears it down.
	s.conn.SetWriteDeadline(time.Now().Add(timeout))
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

func (s *stream) close(error) { s.conn.Close() }

func (p *peerSender) sendSnapshot(m *raftpb.Message) {
	status := raft.SnapshotFailure
	defer func() { p.t.snapshotted(p.id, status) }()
	if f := p.t.faults; f != nil {
		drop, delay := f.Outbound(p.t.id, p.id)
		if drop || !sleepCtx(p.ctx, delay) {
			return
		}
	}
	if err := p.t.checkScheme(p.url); err != nil {
		p.t.log.Warn().Err(err).Msg("not sending a snapshot")
		return
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
	if !strings.EqualFold(r.Header.Get("Upgrade"), upgradeProtocol) {
		http.Error(w, "the peer stream needs Upgrade: "+upgradeProtocol, http.StatusUpgradeRequired)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "the peer stream needs HTTP/1.1", http.StatusHTTPVersionNotSupported)
		return
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	conn.SetDeadline(time.Time{}) // the server's header deadlines end here
	raw := conn
	if tc, ok := conn.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	// A TCP connection, possibly wrapped (the listener may buffer reads).
	if tc, ok := raw.(interface {
		SetKeepAliveConfig(net.KeepAliveConfig) error
	}); ok {
		tc.SetKeepAliveConfig(peerKeepAlive)
	}
	// A stream lives as long as both nodes do; when this one stops,
	// closing the connection ends the read below.
	defer context.AfterFunc(t.stopped, func() { conn.Close() })()
	rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + upgradeProtocol + "\r\n\r\n")
	if err := rw.Flush(); err != nil {
		return
	}
	br := rw.Reader
	var buf []byte
	for {
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return // the sender went away; it reconnects
		}
		if n > maxMessageBytes {
			t.log.Warn().Uint64("bytes", n).Msg("peer message exceeds the limit; closing the stream")
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
			t.log.Warn().Err(err).Msg("bad peer message; closing the stream")
			return
		}
		if m.GetTo() != t.id {
			t.log.Warn().Str("to", strconv.FormatUint(m.GetTo(), 16)).Msg("peer message for another member; closing the stream")
			return
		}
		if err := t.deliver(t.stopped, m); err != nil {
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
