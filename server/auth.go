package server

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"connectrpc.com/connect"
	"github.com/lockd-io/lockd/election"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"github.com/lockd-io/lockd/proto/lockd/v1/lockdv1connect"
)

// Role is what a token may do beyond the names it may touch.
type Role int

const (
	// RoleClient may take leases, locks and elections under its prefixes,
	// read them, and read the cluster's status.
	RoleClient Role = iota + 1
	// RoleAdmin may also change the membership, transfer leadership, take
	// backups, force-release locks under its prefixes and use any lease.
	RoleAdmin
)

func (r Role) String() string {
	switch r {
	case RoleClient:
		return "client"
	case RoleAdmin:
		return "admin"
	default:
		return fmt.Sprintf("role(%d)", int(r))
	}
}

// Principal is an authenticated caller.
type Principal struct {
	// Name identifies the caller in the table (the leases it grants), in
	// the audit log and in error messages.
	Name string
	Role Role
	// Prefixes are the lock names the caller may touch; nil means every
	// name. An election E is the lock election/E.
	Prefixes []string
}

// mayName reports whether the principal may touch the lock name. Given a
// prefix, it reports whether every name under it is one the principal may
// touch: an allowed prefix is a prefix of all of them.
func (p *Principal) mayName(name string) bool {
	if p.Prefixes == nil {
		return true
	}
	for _, pre := range p.Prefixes {
		if strings.HasPrefix(name, pre) {
			return true
		}
	}
	return false
}

// Tokens is a table of bearer tokens, read from a file with one token a
// line:
//
//	# NAME  ROLE    PREFIXES     SECRET
//	billing client  billing/,jobs/ sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//	ops     admin   *            correct-horse-battery-staple
//
// PREFIXES is a comma-separated list of lock name prefixes, or * for every
// name. SECRET is the token itself or, better, sha256: and the hex SHA-256
// of it, so the file does not hold the secret. Blank lines and lines
// starting with # are ignored.
type Tokens struct {
	byHash map[[sha256.Size]byte]*Principal
}

// maxTokenNameBytes bounds a token's name: it is stored with every lease.
const maxTokenNameBytes = 128

// ParseTokens reads a token table.
func ParseTokens(r io.Reader) (*Tokens, error) {
	t := &Tokens{byHash: map[[sha256.Size]byte]*Principal{}}
	names := map[string]bool{}
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		f := strings.Fields(text)
		if len(f) != 4 {
			return nil, fmt.Errorf("line %d: want NAME ROLE PREFIXES SECRET, got %d fields", line, len(f))
		}
		p := &Principal{Name: f[0]}
		if len(p.Name) > maxTokenNameBytes {
			return nil, fmt.Errorf("line %d: name is longer than %d bytes", line, maxTokenNameBytes)
		}
		if names[p.Name] {
			return nil, fmt.Errorf("line %d: name %q is used twice", line, p.Name)
		}
		names[p.Name] = true
		switch f[1] {
		case "client":
			p.Role = RoleClient
		case "admin":
			p.Role = RoleAdmin
		default:
			return nil, fmt.Errorf("line %d: role %q: want client or admin", line, f[1])
		}
		if f[2] != "*" {
			for _, pre := range strings.Split(f[2], ",") {
				if pre == "" || pre == "*" {
					return nil, fmt.Errorf("line %d: prefixes %q: want * alone or a list of non-empty prefixes", line, f[2])
				}
				p.Prefixes = append(p.Prefixes, pre)
			}
		}
		var sum [sha256.Size]byte
		if hexSum, ok := strings.CutPrefix(f[3], "sha256:"); ok {
			b, err := hex.DecodeString(hexSum)
			if err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("line %d: sha256: wants 64 hex digits", line)
			}
			copy(sum[:], b)
		} else {
			if len(f[3]) < 16 {
				return nil, fmt.Errorf("line %d: the token is shorter than 16 characters", line)
			}
			sum = sha256.Sum256([]byte(f[3]))
		}
		if _, dup := t.byHash[sum]; dup {
			return nil, fmt.Errorf("line %d: the same secret is given twice", line)
		}
		t.byHash[sum] = p
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(t.byHash) == 0 {
		return nil, errors.New("no tokens")
	}
	return t, nil
}

// LoadTokens reads a token file.
func LoadTokens(path string) (*Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	t, err := ParseTokens(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// BearerToken is the token of an "Authorization: Bearer TOKEN" header.
func BearerToken(h http.Header) (token string, ok bool) {
	token, ok = strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	return token, ok && token != ""
}

// Lookup finds the principal of a token. The table is keyed by the
// token's hash, so the lookup's timing says nothing about the secrets.
func (t *Tokens) Lookup(token string) (*Principal, bool) {
	if t == nil || token == "" {
		return nil, false
	}
	p, ok := t.byHash[sha256.Sum256([]byte(token))]
	return p, ok
}

// Security is how the server tells who calls it. The zero value trusts
// every caller with everything, as a cluster without TLS and tokens does.
type Security struct {
	// Tokens, when it returns a table, makes every call (but health checks
	// and reflection) carry a bearer token from it. It is called per call,
	// so the table can be swapped while serving.
	Tokens func() *Tokens
	// Identify tells whether the TLS connection of a call carries a
	// member's certificate (one of the cluster's nodes) or a client
	// certificate the cluster trusts. Nil without TLS.
	Identify func(*tls.ConnectionState) (member, client bool)
	// RequireClientCert refuses calls that carry neither.
	RequireClientCert bool
}

type tlsStateKey struct{}

type principalKey struct{}

// withTLSState hands the TLS state of each request to the interceptor,
// which Connect does not otherwise show it.
func withTLSState(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil {
			r = r.WithContext(context.WithValue(r.Context(), tlsStateKey{}, r.TLS))
		}
		h.ServeHTTP(w, r)
	})
}

// principalFrom is the authenticated caller of a call; nil when the
// cluster does not authenticate, or for the cluster's own members.
func principalFrom(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// denied is the one error of every refusal: the caller learns what it
// lacks, never what exists.
func denied(format string, args ...any) error {
	return connect.NewError(connect.CodePermissionDenied, fmt.Errorf(format, args...))
}

// authenticate finds the caller of a call and checks that its role may
// make it. The names the call touches are checked once its request is read
// (authorizeNames).
func (s *Server) authenticate(ctx context.Context, procedure string, header http.Header) (context.Context, *rule, error) {
	sec := &s.cfg.Security
	r, ok := rules[procedure]
	if !ok {
		// Deny by default: a procedure added without a rule is refused
		// until someone decides who may call it.
		return ctx, nil, denied("%s has no access rule", procedure)
	}
	var member, client bool
	if cs, _ := ctx.Value(tlsStateKey{}).(*tls.ConnectionState); cs != nil && sec.Identify != nil {
		member, client = sec.Identify(cs)
	}
	if sec.RequireClientCert && !member && !client {
		return ctx, nil, denied("this cluster requires a client certificate signed by its client CA")
	}
	var tokens *Tokens
	if sec.Tokens != nil {
		tokens = sec.Tokens()
	}
	if tokens == nil {
		return ctx, &r, nil
	}
	bearer, found := BearerToken(header)
	if !found {
		if member && r.member {
			// One of the cluster's nodes, asking for the status (a
			// forwarded keep-alive carries its caller's token instead).
			return ctx, &r, nil
		}
		return ctx, nil, denied("this cluster requires a bearer token (Authorization: Bearer …)")
	}
	p, ok := tokens.Lookup(bearer)
	if !ok {
		return ctx, nil, denied("unknown token")
	}
	if r.admin && p.Role != RoleAdmin {
		return ctx, nil, denied("%s needs an admin token; %q is a %s token", procedure, p.Name, p.Role)
	}
	return context.WithValue(ctx, principalKey{}, p), &r, nil
}

// authorize checks the lock names and the leases a request touches.
func (s *Server) authorize(ctx context.Context, r *rule, msg any) error {
	p := principalFrom(ctx)
	if p == nil {
		return nil
	}
	if r.leases != nil {
		if err := s.mayUseLeases(ctx, r.leases(msg)...); err != nil {
			return err
		}
	}
	if r.names == nil {
		return nil
	}
	names, prefix := r.names(msg)
	for _, n := range names {
		switch {
		case p.mayName(n):
		case prefix:
			return denied("token %q may not read every name under %q", p.Name, n)
		default:
			return denied("token %q may not touch %q", p.Name, n)
		}
	}
	return nil
}

// mayUseLeases refuses the call if a lease among ids, as this node knows
// it, belongs to another principal. A lease this node does not know yet
// passes here; the command that uses it is checked again when applied.
func (s *Server) mayUseLeases(ctx context.Context, ids ...uint64) error {
	p := principalFrom(ctx)
	for _, id := range ids {
		if owner, ok := s.table.LeasePrincipal(id); ok && !p.mayUseLeaseOf(owner) {
			return denied("lease %d belongs to another principal", id)
		}
	}
	return nil
}

// mayUseLeaseOf reports whether the caller may use a lease that owner
// granted: its own, or any for an admin or a cluster without tokens (p is
// nil). The table applies the same rule to commands (Table.mayUse).
func (p *Principal) mayUseLeaseOf(owner string) bool {
	return p == nil || p.Role == RoleAdmin || p.Name == owner
}

// rule is who may call a procedure.
type rule struct {
	// admin: the caller needs an admin token.
	admin bool
	// member: the cluster's own members may call it without a token.
	member bool
	// names lists the lock names a request touches; prefix says they are
	// prefixes (every name under them). Nil for calls that touch no name.
	names func(msg any) (names []string, prefix bool)
	// leases lists the leases a request uses, which must be the caller's.
	// The table checks again when it applies a command; reads of a lease
	// (Get, Events) check after their read, when the lease is known.
	leases func(msg any) []uint64
}

func one(name string) ([]string, bool) { return []string{name}, false }

var rules = map[string]rule{
	lockdv1connect.ClusterServiceStatusProcedure:         {member: true},
	lockdv1connect.ClusterServiceSnapshotProcedure:       {admin: true},
	lockdv1connect.ClusterServiceAddMemberProcedure:      {admin: true},
	lockdv1connect.ClusterServicePromoteMemberProcedure:  {admin: true},
	lockdv1connect.ClusterServiceRemoveMemberProcedure:   {admin: true},
	lockdv1connect.ClusterServiceTransferLeaderProcedure: {admin: true},

	lockdv1connect.LeaseServiceGrantProcedure: {},
	lockdv1connect.LeaseServiceKeepAliveProcedure: {leases: func(m any) []uint64 {
		return []uint64{m.(*lockdv1.KeepAliveRequest).GetLeaseId()}
	}},
	lockdv1connect.LeaseServiceKeepAliveManyProcedure: {leases: func(m any) []uint64 {
		return m.(*lockdv1.KeepAliveManyRequest).GetLeaseIds()
	}},
	lockdv1connect.LeaseServiceRevokeProcedure: {leases: func(m any) []uint64 {
		return []uint64{m.(*lockdv1.RevokeRequest).GetLeaseId()}
	}},
	lockdv1connect.LeaseServiceGetProcedure:    {},
	lockdv1connect.LeaseServiceListProcedure:   {},
	lockdv1connect.LeaseServiceEventsProcedure: {},

	lockdv1connect.LockServiceAcquireProcedure: {names: func(m any) ([]string, bool) {
		r := m.(*lockdv1.AcquireRequest)
		return append([]string{r.GetName()}, r.GetAlso()...), false
	}, leases: func(m any) []uint64 { return []uint64{m.(*lockdv1.AcquireRequest).GetLeaseId()} }},
	lockdv1connect.LockServiceReleaseProcedure: {names: func(m any) ([]string, bool) {
		return one(m.(*lockdv1.ReleaseRequest).GetName())
	}, leases: func(m any) []uint64 { return []uint64{m.(*lockdv1.ReleaseRequest).GetLeaseId()} }},
	lockdv1connect.LockServiceDescribeProcedure: {names: func(m any) ([]string, bool) {
		return one(m.(*lockdv1.DescribeRequest).GetName())
	}},
	lockdv1connect.LockServiceListProcedure: {names: func(m any) ([]string, bool) {
		return []string{m.(*lockdv1.ListRequest).GetPrefix()}, true
	}},
	lockdv1connect.LockServiceCheckFenceProcedure: {names: func(m any) ([]string, bool) {
		return one(m.(*lockdv1.CheckFenceRequest).GetName())
	}},
	lockdv1connect.LockServiceWatchProcedure: {names: func(m any) ([]string, bool) {
		r := m.(*lockdv1.WatchRequest)
		return []string{r.GetName()}, r.GetPrefix()
	}},
	// A pipelined call is checked by the rule of the procedure it stands
	// for, as it is read (pipeline.authorize).
	lockdv1connect.LockServicePipelineProcedure: {},
	lockdv1connect.LockServiceForceReleaseProcedure: {admin: true, names: func(m any) ([]string, bool) {
		return one(m.(*lockdv1.ForceReleaseRequest).GetName())
	}},

	lockdv1connect.ElectionServiceCampaignProcedure: {names: func(m any) ([]string, bool) {
		return one(election.LockName(m.(*lockdv1.CampaignRequest).GetName()))
	}, leases: func(m any) []uint64 { return []uint64{m.(*lockdv1.CampaignRequest).GetLeaseId()} }},
	lockdv1connect.ElectionServiceProclaimProcedure: {names: func(m any) ([]string, bool) {
		return one(election.LockName(m.(*lockdv1.ProclaimRequest).GetName()))
	}, leases: func(m any) []uint64 { return []uint64{m.(*lockdv1.ProclaimRequest).GetLeaseId()} }},
	lockdv1connect.ElectionServiceLeaderProcedure: {names: func(m any) ([]string, bool) {
		return one(election.LockName(m.(*lockdv1.LeaderRequest).GetName()))
	}},
	lockdv1connect.ElectionServiceObserveProcedure: {names: func(m any) ([]string, bool) {
		return one(election.LockName(m.(*lockdv1.ObserveRequest).GetName()))
	}},
	lockdv1connect.ElectionServiceResignProcedure: {names: func(m any) ([]string, bool) {
		return one(election.LockName(m.(*lockdv1.ResignRequest).GetName()))
	}, leases: func(m any) []uint64 { return []uint64{m.(*lockdv1.ResignRequest).GetLeaseId()} }},
}

// authInterceptor authenticates every call and checks what it touches.
type authInterceptor struct{ s *Server }

func (a authInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		ctx, r, err := a.s.authenticate(ctx, req.Spec().Procedure, req.Header())
		if err != nil {
			return nil, err
		}
		if err := a.s.authorize(ctx, r, req.Any()); err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (a authInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (a authInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		// The generation first: a reload that lands during the check below
		// then ends this stream too.
		a.s.authMu.Lock()
		gen := a.s.authGen
		a.s.authMu.Unlock()
		ctx, r, err := a.s.authenticate(ctx, conn.Spec().Procedure, conn.RequestHeader())
		if err != nil {
			return err
		}
		if principalFrom(ctx) == nil {
			return next(ctx, &authorizedConn{StreamingHandlerConn: conn, s: a.s, ctx: ctx, rule: r})
		}
		// A stream opened with a token lasts until the tokens change; then
		// its client reconnects and is judged by the new ones.
		ctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		defer context.AfterFunc(gen, func() { cancel(errReloaded) })()
		err = next(ctx, &authorizedConn{StreamingHandlerConn: conn, s: a.s, ctx: ctx, rule: r})
		if context.Cause(ctx) == errReloaded {
			return connect.NewError(connect.CodeUnavailable, errReloaded)
		}
		return err
	}
}

var errReloaded = errors.New("the cluster's credentials were reloaded; reconnect")

// ReauthorizeStreams ends every stream opened with a token, with
// Unavailable, so that its client reconnects and is judged afresh: call it
// after the tokens change.
func (s *Server) ReauthorizeStreams() {
	s.authMu.Lock()
	defer s.authMu.Unlock()
	s.authEnd()
	s.authGen, s.authEnd = context.WithCancel(context.Background())
}

// authorizedConn checks the names of a stream's request as it is read.
type authorizedConn struct {
	connect.StreamingHandlerConn
	s    *Server
	ctx  context.Context
	rule *rule
}

func (c *authorizedConn) Receive(msg any) error {
	if err := c.StreamingHandlerConn.Receive(msg); err != nil {
		return err
	}
	return c.s.authorize(c.ctx, c.rule, msg)
}
