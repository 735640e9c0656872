package lockd

import (
	"encoding/binary"
	"io"
	"net/http"
	"strings"

	"connectrpc.com/connect"
)

// wholeMessages is the HTTP client the Connect clients call through. On a
// stream it has the transport read each message whole: connect-go writes a
// message's 5-byte envelope prefix and its body to the request body as two
// writes, and Go's HTTP/2 transport sends each write it reads as a DATA
// frame of its own, flushed. One frame a message instead of two is one
// write here, and on the node one frame to handle and one wake of the
// handler reading the stream, not two.
type wholeMessages struct{ hc *http.Client }

var _ connect.HTTPClient = wholeMessages{}

func (w wholeMessages) Do(r *http.Request) (*http.Response, error) {
	if r.Body != nil && r.Body != http.NoBody && enveloped(r.Header.Get("Content-Type")) {
		r.Body = &envelopedBody{body: r.Body}
	}
	return w.hc.Do(r)
}

// enveloped reports whether a request body of this content type is a
// stream of enveloped messages (Connect and gRPC streams; a Connect unary
// request's body is a bare message).
func enveloped(contentType string) bool {
	return strings.HasPrefix(contentType, "application/connect+") || strings.HasPrefix(contentType, "application/grpc")
}

// envelopedBody reads a stream of enveloped messages (a prefix of a flags
// byte and a big-endian uint32 length, then that many bytes) and returns
// no read that ends inside a prefix or a message while the caller's buffer
// has room for more of it. The rest of a message it has begun is written
// at once, so waiting for it never waits for the caller's next message.
type envelopedBody struct {
	body   io.ReadCloser
	prefix [5]byte
	// Between messages both are 0; head > 0 only while rest == 0.
	head int // bytes of the current prefix read
	rest int // bytes of the current message's body still to read
}

func (b *envelopedBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	b.scan(p[:n])
	for err == nil && n < len(p) && (b.rest > 0 || b.head > 0) {
		want := b.rest
		if want == 0 {
			want = len(b.prefix) - b.head
		}
		var m int
		m, err = b.body.Read(p[n:min(len(p), n+want)])
		b.scan(p[n : n+m])
		n += m
	}
	return n, err
}

// scan follows the framing through p, bytes just read.
func (b *envelopedBody) scan(p []byte) {
	for len(p) > 0 {
		if b.rest > 0 {
			k := min(len(p), b.rest)
			b.rest -= k
			p = p[k:]
			continue
		}
		k := copy(b.prefix[b.head:], p)
		b.head += k
		p = p[k:]
		if b.head == len(b.prefix) {
			b.head = 0
			b.rest = int(binary.BigEndian.Uint32(b.prefix[1:]))
		}
	}
}

func (b *envelopedBody) Close() error { return b.body.Close() }
