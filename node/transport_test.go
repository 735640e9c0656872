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

// A peer stream is an upgraded HTTP/1.1 request: it is refused to a sender
// of another cluster and to a request that does not ask for the upgrade,
// and once upgraded it delivers framed messages to the raft loop.
func TestPeerStreamUpgrade(t *testing.T) {
	const cluster = 0xc1
	tr := newTransport(2, cluster, nil, nil, time.Second, zerolog.Nop())
	defer tr.close()
	got := make(chan *raftpb.Message, 1)
	tr.deliver = func(ctx context.Context, m *raftpb.Message) error { got <- m; return nil }
	srv := httptest.NewServer(tr)
	defer srv.Close()
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
