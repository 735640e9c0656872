package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	lockd "github.com/lockd-io/lockd/clients/go"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"github.com/lockd-io/lockd/server"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/durationpb"
)

// securePKI is what a TLS + token cluster of a test is made of.
type securePKI struct {
	dir                   string
	peerCA, clientCA      *testCA
	tokenFile             string
	clientCert, clientKey string
}

// Tokens of the tests: alice and bob share the prefix a/, but not their
// leases; ops is an admin.
const (
	aliceToken = "alice-secret-0123456789"
	bobToken   = "bob-secret-0123456789"
	opsToken   = "ops-secret-0123456789"
)

func newSecurePKI(t *testing.T) *securePKI {
	dir := t.TempDir()
	p := &securePKI{dir: dir, peerCA: newTestCA(t, dir, "peers"), clientCA: newTestCA(t, dir, "clients")}
	p.clientCert, p.clientKey = p.clientCA.issue("app")
	p.tokenFile = filepath.Join(dir, "tokens")
	p.writeTokens(t, "alice client a/ "+aliceToken+"\nbob client a/,b/ "+bobToken+"\nops admin * "+opsToken+"\n")
	return p
}

func (p *securePKI) writeTokens(t *testing.T, text string) {
	t.Helper()
	if err := os.WriteFile(p.tokenFile, []byte("# NAME ROLE PREFIXES SECRET\n"+text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// start starts a TLS cluster: members authenticate each other by
// certificates of the peer CA, clients must show one of the client CA and
// a token.
func (p *securePKI) start(t *testing.T, size int) []*instance {
	return startInstancesConfig(t, size, "https", func(i int, c *serveConfig) {
		cert, key := p.peerCA.issue(c.name)
		c.security = securityFlags{certFile: cert, keyFile: key, peerCAFile: p.peerCA.File,
			clientCAFile: p.clientCA.File, tokenFile: p.tokenFile}
	})
}

// clients calls url over TLS with the client certificate and token.
func (p *securePKI) clients(t *testing.T, url, token string) clients {
	return clientsTLS(t, url, token, clientTLS(t, p.peerCA, p.clientCert, p.clientKey))
}

// clientsTLS calls url over TLS configured by cfg, with token if set.
func clientsTLS(t *testing.T, url, token string, cfg *tls.Config) clients {
	tr := &http.Transport{TLSClientConfig: cfg, Protocols: new(http.Protocols)}
	tr.Protocols.SetHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	var opts []connect.ClientOption
	if token != "" {
		opts = append(opts, connect.WithInterceptors(tokenInterceptor(token)))
	}
	return newClientsHTTP(&http.Client{Transport: tr}, url, opts...)
}

// tokenInterceptor sends a bearer token with calls and streams, as the
// SDK's WithToken does.
type tokenInterceptor string

func (ti tokenInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+string(ti))
		return next(ctx, req)
	}
}

func (ti tokenInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", "Bearer "+string(ti))
		return conn
	}
}

func (ti tokenInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

func wantDenied(t *testing.T, what string, err error) {
	t.Helper()
	if code := codeOf(err); code != connect.CodePermissionDenied {
		t.Fatalf("%s: %v (code %v), want PermissionDenied", what, err, code)
	}
}

// A TLS + token cluster refuses, with PermissionDenied and without changing
// anything, a client without a certificate, without a token, with an
// unknown token, with a token for other names, with another token's lease,
// or with a client token for an admin call.
func TestSecureClusterRefusesAndChangesNothing(t *testing.T) {
	pki := newSecurePKI(t)
	ins := pki.start(t, 3)
	leader := waitLeader(t, ins)
	ctx := context.Background()
	alice := pki.clients(t, leader.url(), aliceToken)
	bob := pki.clients(t, leader.url(), bobToken)
	ops := pki.clients(t, leader.url(), opsToken)

	lease := grant(t, alice, 5*time.Second, "alice")
	held, err := acquire(ctx, alice, &lockdv1.AcquireRequest{Name: "a/x", LeaseId: lease})
	if err != nil || !held.GetGranted() {
		t.Fatalf("alice's acquire of a/x: %v %v", held, err)
	}
	revision := func() uint64 {
		t.Helper()
		resp, err := ops.lock.List(ctx, connect.NewRequest(&lockdv1.ListRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Msg.GetRevision()
	}
	before := revision()

	// Plain HTTP to the TLS port is no API call at all.
	if _, err := newClients("http://"+leader.ln.Addr().String()).cluster.Status(ctx, connect.NewRequest(&lockdv1.StatusRequest{})); err == nil {
		t.Fatal("a plain-text call to a TLS node succeeded")
	}
	// TLS, but no client certificate.
	noCert := clientsTLS(t, leader.url(), aliceToken, clientTLS(t, pki.peerCA, "", ""))
	_, err = noCert.lease.Grant(ctx, connect.NewRequest(&lockdv1.GrantRequest{Ttl: durationpb.New(5 * time.Second)}))
	wantDenied(t, "grant without a client certificate", err)
	// A certificate, but no token, or an unknown one.
	_, err = pki.clients(t, leader.url(), "").lease.Grant(ctx, connect.NewRequest(&lockdv1.GrantRequest{Ttl: durationpb.New(5 * time.Second)}))
	wantDenied(t, "grant without a token", err)
	_, err = pki.clients(t, leader.url(), "").cluster.Status(ctx, connect.NewRequest(&lockdv1.StatusRequest{}))
	wantDenied(t, "status without a token", err)
	_, err = pki.clients(t, leader.url(), "guess-0123456789abcdef").lock.Acquire(ctx, connect.NewRequest(&lockdv1.AcquireRequest{Name: "a/x", LeaseId: lease}))
	wantDenied(t, "acquire with an unknown token", err)

	// Alice's token covers a/ only: other names, in every call that names
	// one, and prefixes wider than hers are refused.
	_, err = acquire(ctx, alice, &lockdv1.AcquireRequest{Name: "b/x", LeaseId: lease})
	wantDenied(t, "acquire of b/x", err)
	_, err = acquire(ctx, alice, &lockdv1.AcquireRequest{Name: "a/y", Also: []string{"b/y"}, LeaseId: lease})
	wantDenied(t, "multi-acquire reaching into b/", err)
	_, err = alice.lock.Describe(ctx, connect.NewRequest(&lockdv1.DescribeRequest{Name: "b/x"}))
	wantDenied(t, "describe of b/x", err)
	_, err = alice.lock.List(ctx, connect.NewRequest(&lockdv1.ListRequest{Prefix: ""}))
	wantDenied(t, "list of every name", err)
	if _, err := alice.lock.List(ctx, connect.NewRequest(&lockdv1.ListRequest{Prefix: "a/"})); err != nil {
		t.Fatalf("list of a/: %v", err)
	}
	_, err = alice.election.Campaign(ctx, connect.NewRequest(&lockdv1.CampaignRequest{Name: "ci", LeaseId: lease}))
	wantDenied(t, "campaign outside her prefixes", err)
	watch, err := alice.lock.Watch(ctx, connect.NewRequest(&lockdv1.WatchRequest{Name: "b/", Prefix: true}))
	if err == nil {
		watch.Receive()
		err = watch.Err()
		watch.Close()
	}
	wantDenied(t, "watch of b/", err)
	if !strings.Contains(err.Error(), "may not read every name") {
		t.Fatalf("watch of b/ refused for another reason: %v", err)
	}

	// Bob shares the prefix, not the lease.
	_, err = acquire(ctx, bob, &lockdv1.AcquireRequest{Name: "a/y", LeaseId: lease})
	wantDenied(t, "bob acquiring with alice's lease", err)
	_, err = bob.lock.Release(ctx, connect.NewRequest(&lockdv1.ReleaseRequest{Name: "a/x", LeaseId: lease, Token: held.GetToken()}))
	wantDenied(t, "bob releasing alice's lock", err)
	_, err = bob.lease.Revoke(ctx, connect.NewRequest(&lockdv1.RevokeRequest{LeaseId: lease}))
	wantDenied(t, "bob revoking alice's lease", err)
	_, err = bob.lease.KeepAlive(ctx, connect.NewRequest(&lockdv1.KeepAliveRequest{LeaseId: lease}))
	wantDenied(t, "bob keeping alice's lease alive", err)
	_, err = bob.lease.Get(ctx, connect.NewRequest(&lockdv1.GetLeaseRequest{LeaseId: lease}))
	wantDenied(t, "bob reading alice's lease", err)
	_, err = bob.lease.KeepAliveMany(ctx, connect.NewRequest(&lockdv1.KeepAliveManyRequest{LeaseIds: []uint64{lease}}))
	wantDenied(t, "bob keeping alice's lease alive among others", err)
	events, err := bob.lease.Events(ctx, connect.NewRequest(&lockdv1.LeaseEventsRequest{LeaseId: lease}))
	if err == nil {
		events.Receive()
		err = events.Err()
		events.Close()
	}
	wantDenied(t, "bob following alice's lease", err)
	if !strings.Contains(err.Error(), "another principal") {
		t.Fatalf("bob's events refused for another reason: %v", err)
	}
	list, err := bob.lease.List(ctx, connect.NewRequest(&lockdv1.ListLeasesRequest{}))
	if err != nil || len(list.Msg.GetLeases()) != 0 {
		t.Fatalf("bob's lease list: %v %v, want none of alice's", list, err)
	}

	// Admin calls need an admin token.
	_, err = alice.cluster.AddMember(ctx, connect.NewRequest(&lockdv1.AddMemberRequest{Name: "n9", PeerUrl: "https://127.0.0.1:1"}))
	wantDenied(t, "a client adding a member", err)
	_, err = alice.lock.ForceRelease(ctx, connect.NewRequest(&lockdv1.ForceReleaseRequest{Name: "a/x", Reason: "test"}))
	wantDenied(t, "a client forcing a release", err)
	snap, err := alice.cluster.Snapshot(ctx, connect.NewRequest(&lockdv1.SnapshotRequest{}))
	if err == nil {
		snap.Receive()
		err = snap.Err()
		snap.Close()
	}
	wantDenied(t, "a client taking a backup", err)
	if !strings.Contains(err.Error(), "admin") {
		t.Fatalf("a client's backup refused for another reason: %v", err)
	}
	_, err = alice.cluster.TransferLeader(ctx, connect.NewRequest(&lockdv1.TransferLeaderRequest{}))
	wantDenied(t, "a client transferring leadership", err)

	if after := revision(); after != before {
		t.Fatalf("refused calls moved the revision from %d to %d", before, after)
	}
	d := describe(t, ops, "a/x")
	if len(d.GetHolders()) != 1 || d.GetHolders()[0].GetLeaseId() != lease {
		t.Fatalf("a/x after the refusals: %v, want alice's lease %d holding it", d, lease)
	}

	// What the tokens allow works, on a follower too: a keep-alive is
	// forwarded to the leader with its caller's token.
	follower := pki.clients(t, followerOf(ins, leader).url(), aliceToken)
	if _, err := follower.lease.KeepAlive(ctx, connect.NewRequest(&lockdv1.KeepAliveRequest{LeaseId: lease})); err != nil {
		t.Fatalf("alice's keep-alive through a follower: %v", err)
	}
	_, err = pki.clients(t, followerOf(ins, leader).url(), bobToken).lease.KeepAlive(ctx, connect.NewRequest(&lockdv1.KeepAliveRequest{LeaseId: lease}))
	wantDenied(t, "bob's keep-alive of alice's lease through a follower", err)
	if _, err := alice.cluster.Status(ctx, connect.NewRequest(&lockdv1.StatusRequest{})); err != nil {
		t.Fatalf("status with a client token: %v", err)
	}
	if _, err := ops.lock.ForceRelease(ctx, connect.NewRequest(&lockdv1.ForceReleaseRequest{Name: "a/x", Reason: "test"})); err != nil {
		t.Fatalf("admin force release: %v", err)
	}
	if _, err := ops.lease.Revoke(ctx, connect.NewRequest(&lockdv1.RevokeRequest{LeaseId: lease})); err != nil {
		t.Fatalf("admin revoke of alice's lease: %v", err)
	}

	// Tokens are reloaded without a restart: carol appears, bob goes, and
	// so does the stream bob had open.
	bobWatch, err := bob.lock.Watch(ctx, connect.NewRequest(&lockdv1.WatchRequest{Name: "a/", Prefix: true}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acquire(ctx, alice, &lockdv1.AcquireRequest{Name: "a/w", LeaseId: grant(t, alice, 5*time.Second, "alice")}); err != nil {
		t.Fatal(err)
	}
	if !bobWatch.Receive() {
		t.Fatalf("bob's watch of a/: %v", bobWatch.Err())
	}
	pki.writeTokens(t, "alice client a/ "+aliceToken+"\ncarol client c/ carol-secret-0123456789\nops admin * "+opsToken+"\n")
	for _, in := range ins {
		in.reload()
	}
	for bobWatch.Receive() {
	}
	if code := codeOf(bobWatch.Err()); code != connect.CodeUnavailable {
		t.Fatalf("bob's watch after his token went: %v, want Unavailable (reconnect)", bobWatch.Err())
	}
	bobWatch.Close()
	grant(t, pki.clients(t, leader.url(), "carol-secret-0123456789"), 5*time.Second, "carol")
	_, err = bob.lease.Grant(ctx, connect.NewRequest(&lockdv1.GrantRequest{Ttl: durationpb.New(5 * time.Second)}))
	wantDenied(t, "bob after his token was removed", err)
	// A broken file is refused and the tokens before it stay.
	pki.writeTokens(t, "carol root c/ carol-secret-0123456789\n")
	for _, in := range ins {
		in.reload()
	}
	grant(t, pki.clients(t, leader.url(), "carol-secret-0123456789"), 5*time.Second, "carol")
}

// The SDK and the CLI speak TLS with client certificates and tokens.
func TestSecureClusterSDKAndCLI(t *testing.T) {
	pki := newSecurePKI(t)
	ins := pki.start(t, 3)
	var eps []string
	for _, in := range ins {
		eps = append(eps, in.ln.Addr().String()) // host:port: the client's TLS makes them https
	}
	c, err := lockd.New(eps, lockd.WithTLS(clientTLS(t, pki.peerCA, pki.clientCert, pki.clientKey)), lockd.WithToken(aliceToken))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := c.NewSession(ctx, lockd.WithTTL(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	m := lockd.NewMutex(s, "a/job")
	if err := m.Lock(ctx); err != nil {
		t.Fatalf("SDK lock of a/job: %v", err)
	}
	if err := lockd.NewMutex(s, "b/job").Lock(ctx); codeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("SDK lock of b/job: %v, want PermissionDenied at once", err)
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}

	opsFile := filepath.Join(pki.dir, "ops-token")
	if err := os.WriteFile(opsFile, []byte(opsToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cli := func(token string, args ...string) (string, error) {
		args = append(args, "--endpoints", strings.Join(eps, ","), "--ca-file", pki.peerCA.File,
			"--cert-file", pki.clientCert, "--key-file", pki.clientKey, "--token-file", token)
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != 0 {
			return out.String(), errors.New(errOut.String())
		}
		return out.String(), nil
	}
	out, err := cli(opsFile, "member", "list")
	if err != nil || strings.Count(out, "voter") != 3 {
		t.Fatalf("lockd member list over TLS: %q %v", out, err)
	}
	aliceFile := filepath.Join(pki.dir, "alice-token")
	os.WriteFile(aliceFile, []byte(aliceToken), 0o600)
	if _, err := cli(aliceFile, "member", "remove", "n3"); err == nil || !strings.Contains(err.Error(), "admin") {
		t.Fatalf("lockd member remove with a client token: %v, want a refusal naming the admin role", err)
	}
	if _, err := cli(aliceFile, "status"); err != nil {
		t.Fatalf("lockd status with a client token: %v", err)
	}
}

// A node whose certificate the peer CA did not sign cannot join, even
// after an admin added it, and cannot speak raft to the members; nor can a
// client, whatever its certificate.
func TestSecureClusterRefusesForeignPeers(t *testing.T) {
	pki := newSecurePKI(t)
	ins := pki.start(t, 3)
	leader := waitLeader(t, ins)
	ctx := context.Background()

	addr := freeAddrs(t, 1)[0]
	ops := pki.clients(t, leader.url(), opsToken)
	if _, err := ops.cluster.AddMember(ctx, connect.NewRequest(&lockdv1.AddMemberRequest{Name: "rogue", PeerUrl: "https://" + addr, Learner: true})); err != nil {
		t.Fatal(err)
	}
	rogueCA := newTestCA(t, pki.dir, "rogue")
	cert, key := rogueCA.issue("rogue")
	c := serveConfig{name: "rogue", dataDir: filepath.Join(pki.dir, "rogue-data"), listen: addr, advertise: "https://" + addr,
		join: leader.url(), heartbeat: 30 * time.Millisecond, electionTimeout: testElection, snapshotEntries: 10000,
		security: securityFlags{certFile: cert, keyFile: key, peerCAFile: pki.peerCA.File}}
	if in, err := start(c, nil, zerolog.Nop()); err == nil {
		in.close()
		t.Fatal("a node with a certificate of another CA joined")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("joining with a foreign certificate: %v, want a certificate error", err)
	}

	// Straight at the peer endpoints: a client certificate (trusted for the
	// API, not for raft) and no certificate are both refused; a foreign one
	// does not get through the handshake.
	refusedAtPeerEndpoints(t, leader, clientTLS(t, pki.peerCA, pki.clientCert, pki.clientKey), true)
	refusedAtPeerEndpoints(t, leader, clientTLS(t, pki.peerCA, "", ""), true)
	// A TLS client offers only a certificate of a CA the server names;
	// a node (as the rogue) sends its own whatever the server asks for.
	foreign := clientTLS(t, pki.peerCA, cert, key)
	foreign.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &foreign.Certificates[0], nil }
	refusedAtPeerEndpoints(t, leader, foreign, false)
	// The rogue member never received anything: the leader has matched
	// none of its log.
	st, err := leader.node.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st.Members {
		if m.Name == "rogue" && m.Progress != nil && m.Progress.Match != 0 {
			t.Fatalf("the rogue member matched the log up to %d", m.Progress.Match)
		}
	}
}

// refusedAtPeerEndpoints sends a snapshot and opens a raft stream to in
// over cfg, and fails unless both are refused: with 403 if answered is set,
// at the TLS handshake if not.
func refusedAtPeerEndpoints(t *testing.T, in *instance, cfg *tls.Config, answered bool) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	for _, path := range []string{"/lockd.peer.v1/snapshot", "/lockd.peer.v1/stream"} {
		req, _ := http.NewRequest(http.MethodPost, in.url()+path, strings.NewReader("x"))
		if path == "/lockd.peer.v1/stream" {
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "lockd-raft/1")
		}
		resp, err := hc.Do(req)
		if !answered {
			if err == nil {
				resp.Body.Close()
				t.Fatalf("%s: a foreign certificate got through the handshake: %s", path, resp.Status)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v, want a 403 answer", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%s: %s %s, want 403", path, resp.Status, body)
		}
	}
}

// A client CA that the peer CA's root signed does not make its clients
// members, even when they send the intermediate along.
func TestClientOfIntermediateIsNoMember(t *testing.T) {
	dir := t.TempDir()
	root := newTestCA(t, dir, "root")
	clients := root.intermediate("clients")
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("ops admin * "+opsToken+"\n"), 0o600)
	ins := startInstancesConfig(t, 1, "https", func(i int, c *serveConfig) {
		cert, key := root.issue(c.name)
		c.security = securityFlags{certFile: cert, keyFile: key, peerCAFile: root.File, clientCAFile: clients.File, tokenFile: tokens}
	})
	cert, key := clients.issue("app")
	cfg := clientTLS(t, root, cert, key)
	refusedAtPeerEndpoints(t, ins[0], cfg, true)
	// The same certificate is a good client certificate, and without a
	// token it is no member that may ask for the status either.
	c := clientsTLS(t, ins[0].url(), "", cfg)
	_, err := c.cluster.Status(context.Background(), connect.NewRequest(&lockdv1.StatusRequest{}))
	wantDenied(t, "status with a client certificate and no token", err)
	if _, err := clientsTLS(t, ins[0].url(), opsToken, cfg).cluster.Status(context.Background(), connect.NewRequest(&lockdv1.StatusRequest{})); err != nil {
		t.Fatalf("status with the client certificate and a token: %v", err)
	}
}

// Security flags that do not fit together are usage errors, said before
// anything starts.
func TestSecurityFlagsMustFit(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, dir, "peers")
	cert, key := ca.issue("n1")
	one := []string{"https://127.0.0.1:1"}
	three := []string{"https://127.0.0.1:1", "https://127.0.0.1:2", "https://127.0.0.1:3"}
	for name, tc := range map[string]struct {
		f    securityFlags
		urls []string
	}{
		"key without cert":               {securityFlags{keyFile: key}, nil},
		"cert without key":               {securityFlags{certFile: cert}, one},
		"peer CA without TLS":            {securityFlags{peerCAFile: ca.File}, nil},
		"client CA without TLS":          {securityFlags{clientCAFile: ca.File}, nil},
		"TLS without peer CA":            {securityFlags{certFile: cert, keyFile: key}, three},
		"TLS with an http peer":          {securityFlags{certFile: cert, keyFile: key, peerCAFile: ca.File}, []string{"https://127.0.0.1:1", "http://127.0.0.1:2"}},
		"https peer without TLS":         {securityFlags{}, three},
		"a missing certificate":          {securityFlags{certFile: cert + ".gone", keyFile: key}, one},
		"a CA file without certificates": {securityFlags{certFile: cert, keyFile: key, peerCAFile: key}, one},
		"a missing token file":           {securityFlags{tokenFile: filepath.Join(dir, "none")}, nil},
		"one CA for peers and clients":   {securityFlags{certFile: cert, keyFile: key, peerCAFile: ca.File, clientCAFile: ca.File}, one},
	} {
		if _, err := loadSecurity(tc.f, tc.urls); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := loadSecurity(securityFlags{certFile: cert, keyFile: key, peerCAFile: ca.File}, three); err != nil {
		t.Errorf("TLS with a peer CA: %v", err)
	}
}

// lockd token new makes a token and the line that admits it, holding only
// its hash; bad roles and prefixes are usage errors.
func TestTokenNew(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"token", "new", "billing", "--prefixes", "billing/,jobs/", "--output", "json"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var got struct{ Token, Line string }
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(got.Line, got.Token) || len(got.Token) < 32 {
		t.Fatalf("token %q, line %q: want a long token whose line holds only its hash", got.Token, got.Line)
	}
	tokens, err := server.ParseTokens(strings.NewReader(got.Line))
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := tokens.Lookup(got.Token); !ok || p.Name != "billing" || p.Role != server.RoleClient || len(p.Prefixes) != 2 {
		t.Fatalf("the line admits %+v, %v", p, ok)
	}
	for _, args := range [][]string{
		{"token", "new", "x", "--role", "root", "--prefixes", "*"},
		{"token", "new", "x"},
		{"token", "new", "x", "--prefixes", "a/,,b/"},
		{"token", "new"},
		{"token"},
	} {
		if code := run(args, &out, &errOut); code != 2 {
			t.Errorf("lockd %s: exit %d, want 2", strings.Join(args, " "), code)
		}
	}
}

// With tokens, the profiler needs an admin token; /metrics and the health
// endpoints stay open to scrapers and probes.
func TestPprofNeedsAdminToken(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("ops admin * "+opsToken+"\nalice client a/ "+aliceToken+"\n"), 0o600)
	ins := startInstancesConfig(t, 1, "http", func(i int, c *serveConfig) {
		c.pprof = true
		c.security.tokenFile = tokens
	})
	get := func(path, token string) int {
		req, _ := http.NewRequest(http.MethodGet, ins[0].url()+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/debug/pprof/", "", http.StatusForbidden},
		{"/debug/pprof/", aliceToken, http.StatusForbidden},
		{"/debug/pprof/cmdline", "", http.StatusForbidden},
		{"/debug/pprof/", opsToken, http.StatusOK},
		{"/metrics", "", http.StatusOK},
		{"/healthz", "", http.StatusOK},
	} {
		if got := get(tc.path, tc.token); got != tc.want {
			t.Errorf("GET %s with token %q: %d, want %d", tc.path, tc.token, got, tc.want)
		}
	}
}

// Reloading the credentials ends a client's Pipeline stream, but not its
// waits: the waiters stay queued, the SDK retries them with their request
// ids on a new stream, and they keep their places.
func TestSecureReloadKeepsPipelinedWaiters(t *testing.T) {
	pki := newSecurePKI(t)
	ins := pki.start(t, 1)
	c, err := lockd.New([]string{ins[0].ln.Addr().String()}, lockd.WithTLS(clientTLS(t, pki.peerCA, pki.clientCert, pki.clientKey)), lockd.WithToken(aliceToken))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	session := func() *lockd.Session {
		s, err := c.NewSession(ctx, lockd.WithTTL(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close(context.Background()) })
		return s
	}
	a, b, d := session(), session(), session()
	ma := lockd.NewMutex(a, "a/reload")
	if err := ma.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	alice := pki.clients(t, ins[0].url(), aliceToken)
	queued := func(n int) func() error {
		return func() error {
			if w := describe(t, alice, "a/reload").GetWaiters(); len(w) != n {
				return fmt.Errorf("waiters %v, want %d", w, n)
			}
			return nil
		}
	}
	order := make(chan string, 2)
	lock := func(s *lockd.Session, name string) {
		m := lockd.NewMutex(s, "a/reload")
		if err := m.Lock(ctx); err != nil {
			t.Errorf("%s: %v", name, err)
			order <- name + " failed"
			return
		}
		order <- name
		m.Unlock(ctx)
	}
	go lock(b, "b")
	eventually(t, 10*time.Second, "b queued", queued(1))
	go lock(d, "d")
	eventually(t, 10*time.Second, "d queued behind b", queued(2))
	waiters := describe(t, alice, "a/reload").GetWaiters()
	ins[0].reload() // ends the stream the waits came on
	time.Sleep(500 * time.Millisecond)
	if after := describe(t, alice, "a/reload").GetWaiters(); len(after) != 2 || after[0].GetLeaseId() != waiters[0].GetLeaseId() || after[1].GetLeaseId() != waiters[1].GetLeaseId() {
		t.Fatalf("waiters after the reload %v, before %v", after, waiters)
	}
	if err := ma.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if first, second := <-order, <-order; first != "b" || second != "d" {
		t.Fatalf("granted %s then %s, want b then d", first, second)
	}
}
