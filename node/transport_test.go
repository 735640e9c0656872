package node

import (
	"bufio"
	"context"
	"encoding/binary"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// servePeer serves the peer endpoints of member id on a test server, and
// hands what they deliver to the raft loop to the channel instead.
func servePeer(t *testing.T, id, cluster uint64, buffer int) (<-chan *raftpb.Message, *httptest.Server) {
	t.Helper()
	tr := newTransport(id, cluster, nil, nil, time.Second, zerolog.Nop())
	t.Cleanup(tr.close)
	got := make(chan *raftpb.Message, buffer)
	tr.deliver = func(ctx context.Context, m *raftpb.Message) error { got <- m; return nil }
	srv := httptest.NewServer(tr)
	t.Cleanup(srv.Close)
	return got, srv
}

// A peer stream is an upgraded HTTP/1.1 request: it is refused to a sender
// of another cluster and to a request that does not ask for the upgrade,
// and once upgraded it delivers framed messages to the raft loop.
func TestPeerStreamUpgrade(t *testing.T) {
	const cluster = 0xc1
	got, srv := servePeer(t, 2, cluster, 1)
	addr := strings.TrimPrefix(srv.URL, "http://")

	dial := func(clusterID uint64, upgrade string) (net.Conn, *bufio.Reader, *http.Response) {
		t.Helper()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		req, _ := http.NewRequest(http.MethodPost, srv.URL+streamPath, nil)
		req.Header.Set(headerCluster, strconv.FormatUint(clusterID, 16))
		req.Header.Set(headerFrom, "1")
		if upgrade != "" {
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", upgrade)
		}
		if err := req.Write(conn); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatal(err)
		}
		return conn, br, resp
	}

	if _, _, resp := dial(0xbad, upgradeProtocol); resp.StatusCode != http.StatusForbidden {
		t.Errorf("another cluster's stream: %s, want 403", resp.Status)
	}
	if _, _, resp := dial(cluster, ""); resp.StatusCode != http.StatusUpgradeRequired {
		t.Errorf("a stream without the upgrade: %s, want 426", resp.Status)
	}
	conn, _, resp := dial(cluster, upgradeProtocol)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s, want 101", resp.Status)
	}
	m := &raftpb.Message{Type: raftpb.MessageType_MsgHeartbeat.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Term: proto.Uint64(7)}
	frame := binary.AppendUvarint(nil, uint64(proto.Size(m)))
	frame, _ = proto.MarshalOptions{}.MarshalAppend(frame, m)
	if _, err := conn.Write(frame); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-got:
		if !proto.Equal(d, m) {
			t.Fatalf("delivered %v, want %v", d, m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the message was not delivered")
	}
}

// A sender reports a peer it cannot reach as unreachable, and reconnects
// (with backoff) once the peer listens again; a peer whose queue is full
// has new messages dropped and is reported, without blocking the sender;
// and the peer's process gone (its port refusing after its stream ended)
// is reported as gone.
func TestPeerSenderReconnectsAndBounds(t *testing.T) {
	const cluster = 0xc1
	// Reserve an address for the receiver, and leave it closed for now.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	sender := newTransport(1, cluster, nil, nil, time.Second, zerolog.Nop())
	defer sender.close()
	unreachable := make(chan uint64, 1<<14)
	gone := make(chan uint64, 16)
	sender.unreachable = func(id uint64) { unreachable <- id }
	sender.gone = func(id uint64) { gone <- id }
	sender.setPeer(2, "http://"+addr)
	heartbeat := func(term uint64) *raftpb.Message {
		return &raftpb.Message{Type: raftpb.MessageType_MsgHeartbeat.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Term: proto.Uint64(term)}
	}

	sender.send([]*raftpb.Message{heartbeat(1)})
	select {
	case id := <-unreachable:
		if id != 2 {
			t.Fatalf("unreachable %d, want 2", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a peer nobody listens for was not reported unreachable")
	}

	// The receiver comes up at the address: messages flow again, in order.
	receiver := newTransport(2, cluster, nil, nil, time.Second, zerolog.Nop())
	got := make(chan uint64, 1<<14)
	receiver.deliver = func(ctx context.Context, m *raftpb.Message) error { got <- m.GetTerm(); return nil }
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: receiver}
	go srv.Serve(ln)
	deadline := time.Now().Add(10 * time.Second)
	var last uint64
	for term := uint64(2); last == 0; term++ {
		if time.Now().After(deadline) {
			t.Fatal("no message arrived after the peer came up")
		}
		sender.send([]*raftpb.Message{heartbeat(term)})
		select {
		case last = <-got:
		case <-time.After(50 * time.Millisecond):
		}
	}
	var batch []*raftpb.Message
	for i := range uint64(1000) {
		batch = append(batch, heartbeat(1000+i))
	}
	sender.send(batch)
	for i := uint64(1000); i < 2000; i++ {
		select {
		case term := <-got:
			for term < 1000 { // late retries of the probes above
				term = <-got
			}
			if term != i {
				t.Fatalf("received term %d, want %d: out of order or lost", term, i)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d of 1000 did not arrive", i-1000)
		}
	}

	// The receiver's process goes: its streams end and its port refuses.
	for len(unreachable) > 0 {
		<-unreachable
	}
	srv.Close()
	receiver.close()
	select {
	case id := <-gone:
		if id != 2 {
			t.Fatalf("gone %d, want 2", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a peer whose process went was not reported gone")
	}

	// Nobody listens, so the sender backs off between dials: a burst larger
	// than its queue is dropped beyond the queue, each drop reported, and
	// send never blocks the raft loop.
	burst := make([]*raftpb.Message, 2*peerQueueLen)
	for i := range burst {
		burst[i] = heartbeat(5000 + uint64(i))
	}
	start := time.Now()
	sender.send(burst)
	if took := time.Since(start); took > time.Second {
		t.Errorf("send blocked for %v on a full queue", took)
	}
	// The sender may take a batch or two off the queue (to fail to dial)
	// while the burst goes in; the rest beyond the queue is dropped.
	if n := len(unreachable); n < peerQueueLen-2*maxBatch {
		t.Errorf("%d drops reported for a burst of %d into a queue of %d", n, len(burst), peerQueueLen)
	}
}

// An append without entries only tells a follower the leader's commit
// index: a later append of the same term in the same write tells it as
// much, so the first is not sent; one alone is sent after commitHold.
func TestPeerSenderFoldsCommitNews(t *testing.T) {
	const cluster = 0xc1
	got, srv := servePeer(t, 2, cluster, 16)
	sender := newTransport(1, cluster, nil, nil, time.Second, zerolog.Nop())
	defer sender.close()
	sender.setPeer(2, srv.URL)

	next := func() *raftpb.Message {
		t.Helper()
		select {
		case m := <-got:
			return m
		case <-time.After(10 * time.Second):
			t.Fatal("no message arrived")
			return nil
		}
	}
	news := func(term, commit uint64) *raftpb.Message {
		return &raftpb.Message{Type: raftpb.MessageType_MsgApp.Enum(), From: proto.Uint64(1), To: proto.Uint64(2),
			Term: proto.Uint64(term), Index: proto.Uint64(commit), Commit: proto.Uint64(commit)}
	}
	appendOf := func(term, index, commit uint64) *raftpb.Message {
		m := news(term, commit)
		m.Index = proto.Uint64(index - 1)
		m.Entries = []*raftpb.Entry{{Index: proto.Uint64(index), Term: proto.Uint64(term)}}
		return m
	}

	sender.send([]*raftpb.Message{news(3, 10)})
	if m := next(); m.GetCommit() != 10 || len(m.GetEntries()) != 0 {
		t.Fatalf("got %v, want the held commit news", m)
	}

	// Held (for as long as it takes, here) until the append comes, which
	// says all it would: the same whether the sender took them off its
	// queue together or not.
	patient := newTransport(1, cluster, nil, nil, time.Second, zerolog.Nop())
	defer patient.close()
	patient.commitHold = time.Hour
	patient.setPeer(2, srv.URL)
	beat := &raftpb.Message{Type: raftpb.MessageType_MsgHeartbeat.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Term: proto.Uint64(3)}
	patient.send([]*raftpb.Message{news(3, 11), appendOf(3, 12, 11), news(3, 12), beat})
	if m := next(); len(m.GetEntries()) != 1 {
		t.Fatalf("got %v, want the append: the commit news before it says nothing more", m)
	}
	if m := next(); m.GetCommit() != 12 || len(m.GetEntries()) != 0 {
		t.Fatalf("got %v, want the commit news after the append", m)
	}
	if m := next(); m.GetType() != raftpb.MessageType_MsgHeartbeat {
		t.Fatalf("got %v, want the heartbeat", m)
	}
}

func TestDropSuperseded(t *testing.T) {
	app := func(term, commit uint64, entries int) *raftpb.Message {
		m := &raftpb.Message{Type: raftpb.MessageType_MsgApp.Enum(), Term: proto.Uint64(term), Commit: proto.Uint64(commit), Index: proto.Uint64(commit)}
		for range entries {
			m.Entries = append(m.Entries, &raftpb.Entry{})
		}
		return m
	}
	beat := &raftpb.Message{Type: raftpb.MessageType_MsgHeartbeat.Enum(), Term: proto.Uint64(4), Commit: proto.Uint64(9)}
	a, b, c, d, e := app(4, 7, 0), app(4, 8, 0), app(4, 8, 2), app(4, 9, 0), app(5, 9, 0)
	// The leader went back to probing: the next append starts lower.
	probe := app(4, 9, 1)
	probe.Index = proto.Uint64(6)
	for _, tc := range []struct {
		name     string
		in, want []*raftpb.Message
	}{
		{"alone", []*raftpb.Message{a}, []*raftpb.Message{a}},
		{"by a later news", []*raftpb.Message{a, b}, []*raftpb.Message{b}},
		{"by entries", []*raftpb.Message{a, beat, c, d}, []*raftpb.Message{beat, c, d}},
		{"not by an earlier one", []*raftpb.Message{c, a}, []*raftpb.Message{c, a}},
		{"not by a heartbeat", []*raftpb.Message{a, beat}, []*raftpb.Message{a, beat}},
		{"not across terms", []*raftpb.Message{d, e}, []*raftpb.Message{d, e}},
		{"entries never", []*raftpb.Message{c, app(4, 9, 1)}, []*raftpb.Message{c, app(4, 9, 1)}},
		{"not by a probe from further back", []*raftpb.Message{d, probe}, []*raftpb.Message{d, probe}},
	} {
		got := dropSuperseded(append([]*raftpb.Message(nil), tc.in...))
		if len(got) != len(tc.want) {
			t.Errorf("%s: kept %d of %d, want %d", tc.name, len(got), len(tc.in), len(tc.want))
			continue
		}
		for i := range got {
			if !proto.Equal(got[i], tc.want[i]) {
				t.Errorf("%s: message %d is %v, want %v", tc.name, i, got[i], tc.want[i])
			}
		}
	}
}
