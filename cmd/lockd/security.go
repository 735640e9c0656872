package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
	"github.com/lockd-io/lockd/server"
	"github.com/rs/zerolog"
)

// securityFlags are serve's TLS and token flags.
type securityFlags struct {
	certFile     string
	keyFile      string
	peerCAFile   string
	clientCAFile string
	tokenFile    string
}

// security is a node's TLS material and token table. The certificate and
// the tokens can be reloaded while serving (SIGHUP); the CAs are read once.
type security struct {
	flags securityFlags

	cert   atomic.Pointer[tls.Certificate]
	tokens atomic.Pointer[server.Tokens]

	// The CA files, and both together for the TLS handshake; nil when not
	// given.
	peerCAs, clientCAs, eitherCAs *x509.CertPool

	// identities remembers what identify found for a certificate, for a
	// minute, so that a call does not pay for a chain verification.
	identities sync.Map // string(leaf.Raw) → identity
	remembered atomic.Int64
}

type identity struct {
	member, client bool
	at             time.Time
}

// tlsOn reports whether the node serves TLS.
func (s *security) tlsOn() bool { return s.flags.certFile != "" }

// loadSecurity reads the files the flags name and checks they fit
// together and with the cluster's URLs.
func loadSecurity(f securityFlags, urls []string) (*security, error) {
	s := &security{flags: f}
	switch {
	case (f.certFile == "") != (f.keyFile == ""):
		return nil, errors.New("--cert-file and --key-file go together")
	case f.certFile == "" && (f.peerCAFile != "" || f.clientCAFile != ""):
		return nil, errors.New("--peer-ca-file and --client-ca-file need TLS: give --cert-file and --key-file too")
	case f.certFile != "" && f.peerCAFile == "":
		// Even a single node: a member added later could never connect.
		return nil, errors.New("TLS needs --peer-ca-file, the CA that signs the members' certificates (this node's too), so that members can authenticate each other")
	}
	for _, u := range urls {
		if s.tlsOn() && !strings.HasPrefix(u, "https://") {
			return nil, fmt.Errorf("URL %s: a node with TLS talks to its peers over https only", u)
		}
		if !s.tlsOn() && strings.HasPrefix(u, "https://") {
			return nil, fmt.Errorf("URL %s is https: give --cert-file and --key-file", u)
		}
	}
	if err := s.reload(); err != nil {
		return nil, err
	}
	var peer, client []*x509.Certificate
	var err error
	if f.peerCAFile != "" {
		if peer, err = loadCAs(f.peerCAFile); err != nil {
			return nil, err
		}
		s.peerCAs = certPool(peer)
	}
	if f.clientCAFile != "" {
		if client, err = loadCAs(f.clientCAFile); err != nil {
			return nil, err
		}
		s.clientCAs = certPool(client)
	}
	for _, c := range client {
		if slices.ContainsFunc(peer, c.Equal) {
			return nil, errors.New("--peer-ca-file and --client-ca-file share a certificate: the peer CA must sign members' certificates only, or any client could speak for a member")
		}
	}
	if peer != nil || client != nil {
		s.eitherCAs = certPool(slices.Concat(peer, client))
	}
	return s, nil
}

// reload reads the certificate and the token file again. On an error it
// keeps what it had.
func (s *security) reload() error {
	var cert *tls.Certificate
	if s.flags.certFile != "" {
		c, err := tls.LoadX509KeyPair(s.flags.certFile, s.flags.keyFile)
		if err != nil {
			return fmt.Errorf("loading the certificate: %w", err)
		}
		cert = &c
	}
	var tokens *server.Tokens
	if s.flags.tokenFile != "" {
		t, err := server.LoadTokens(s.flags.tokenFile)
		if err != nil {
			return fmt.Errorf("loading tokens: %w", err)
		}
		tokens = t
	}
	if cert != nil {
		s.cert.Store(cert)
	}
	if tokens != nil {
		s.tokens.Store(tokens)
	}
	return nil
}

// loadCAs reads the PEM certificates of a CA file.
func loadCAs(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return certs, nil
}

func certPool(certs []*x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool
}

func (s *security) currentCert() (*tls.Certificate, error) { return s.cert.Load(), nil }

// serverTLS is the listener's TLS configuration: one certificate for
// clients and peers alike, and client certificates, when given, verified
// against either CA; identify then tells which one a caller is.
func (s *security) serverTLS() *tls.Config {
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.currentCert() },
		NextProtos:     []string{"h2", "http/1.1"},
	}
	if s.eitherCAs != nil {
		cfg.ClientCAs = s.eitherCAs
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg
}

// peerTLS is the client side of connections to the other members, for
// raft traffic and for the node's own API calls to them: it presents this
// member's certificate and trusts only certificates of the peer CA.
func (s *security) peerTLS() *tls.Config {
	if !s.tlsOn() {
		return nil
	}
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		RootCAs:              s.peerCAs,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return s.currentCert() },
	}
}

// identify tells whether the caller's certificate is a member's (signed
// directly by a CA of the peer CA file: intermediates the caller sends do
// not count, so a client CA signed by the same root is no way in) or a
// client's (chained, through the caller's intermediates if need be, to the
// client CA file).
func (s *security) identify(cs *tls.ConnectionState) (member, client bool) {
	if len(cs.PeerCertificates) == 0 {
		return false, false
	}
	leaf := cs.PeerCertificates[0]
	key := string(leaf.Raw)
	if v, ok := s.identities.Load(key); ok {
		if id := v.(identity); time.Since(id.at) < time.Minute {
			return id.member, id.client
		}
	}
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if s.peerCAs != nil {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: s.peerCAs, KeyUsages: usage})
		member = err == nil
	}
	if s.clientCAs != nil {
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: s.clientCAs, Intermediates: inter, KeyUsages: usage})
		client = err == nil
	}
	if s.remembered.Add(1) > 10000 {
		s.identities.Clear() // a bound, not a cache policy: certificates are few
		s.remembered.Store(0)
	}
	s.identities.Store(key, identity{member: member, client: client, at: time.Now()})
	return member, client
}

// serverSecurity is what the API server needs to judge its callers.
func (s *security) serverSecurity() server.Security {
	sec := server.Security{RequireClientCert: s.clientCAs != nil}
	if s.flags.tokenFile != "" {
		sec.Tokens = s.tokens.Load
	}
	if s.tlsOn() {
		sec.Identify = s.identify
	}
	return sec
}

// clientOptions are the SDK options of the node's own calls to other
// members' APIs (joining, asking whether it was removed).
func (s *security) clientOptions() []lockd.Option {
	if !s.tlsOn() {
		return nil
	}
	return []lockd.Option{lockd.WithTLS(s.peerTLS())}
}

// apiHTTPClient reaches the other members' APIs (forwarded keep-alives).
func (s *security) apiHTTPClient() *http.Client {
	if !s.tlsOn() {
		return nil
	}
	tr := &http.Transport{Protocols: new(http.Protocols), TLSClientConfig: s.peerTLS()}
	tr.Protocols.SetHTTP2(true)
	return &http.Client{Transport: tr}
}

// requireMember guards the peer endpoints: with TLS, only a caller whose
// certificate the peer CA signed may send raft traffic.
func (s *security) requireMember(h http.Handler) http.Handler {
	if !s.tlsOn() {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			http.Error(w, "peer endpoints need TLS", http.StatusForbidden)
			return
		}
		if member, _ := s.identify(r.TLS); !member {
			http.Error(w, "peer endpoints need a member certificate signed by the peer CA", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// requireAdmin guards operator endpoints (pprof) when the cluster has
// tokens: they need an admin token.
func (s *security) requireAdmin(h http.Handler) http.Handler {
	if s.flags.tokenFile == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, _ := server.BearerToken(r.Header)
		if p, ok := s.tokens.Load().Lookup(token); !ok || p.Role != server.RoleAdmin {
			http.Error(w, "this endpoint needs an admin token (Authorization: Bearer …)", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// logSecurity says at startup how the node is protected, and warns of the
// combinations that leak.
func (s *security) log(log zerolog.Logger) {
	ev := log.Info().Bool("tls", s.tlsOn()).Bool("client-certs", s.clientCAs != nil).Bool("tokens", s.flags.tokenFile != "")
	ev.Msg("security")
	if s.flags.tokenFile != "" && !s.tlsOn() {
		log.Warn().Msg("tokens without TLS travel in plain text: use this only on a trusted network")
	}
	if s.clientCAs != nil && s.flags.tokenFile == "" {
		log.Warn().Msg("client certificates without --token-file: every holder of one may make every call, admin calls included")
	}
}
