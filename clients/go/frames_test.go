package lockd

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"
	"time"
)

// envelope is a message as connect-go writes it to a stream: a prefix
// (flags, big-endian length), then the body, in two writes (the second
// empty for an empty message).
func envelope(body []byte) [][]byte {
	prefix := make([]byte, 5)
	binary.BigEndian.PutUint32(prefix[1:], uint32(len(body)))
	return [][]byte{prefix, body}
}

// Each read returns whole messages where the buffer allows, never waits
// for a message that was not written, and the bytes come through as they
// went in, whatever the buffer's size.
func TestEnvelopedBodyReadsWholeMessages(t *testing.T) {
	bodies := [][]byte{[]byte("acquire m/1"), nil, bytes.Repeat([]byte("x"), 300), []byte("release m/1")}
	for _, size := range []int{3, 5, 7, 64, 4096} {
		pr, pw := io.Pipe()
		var want bytes.Buffer
		sent := make(chan int) // messages written so far
		go func() {
			for i, b := range bodies {
				for _, w := range envelope(b) {
					want.Write(w)
					pw.Write(w)
				}
				sent <- i + 1
			}
			close(sent)
			pw.Close()
		}()
		body := &envelopedBody{body: pr}
		var got bytes.Buffer
		buf := make([]byte, size)
		reads := 0
		done := make(chan error)
		go func() {
			for {
				n, err := body.Read(buf)
				got.Write(buf[:n])
				if n > 0 {
					reads++
				}
				if size >= 5+300 && n > 0 && body.rest+body.head != 0 {
					done <- io.ErrShortBuffer // a read ended inside a message that fit
					return
				}
				if err == io.EOF {
					done <- nil
					return
				}
				if err != nil {
					done <- err
					return
				}
			}
		}()
		for range sent {
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("buffer %d: %v", size, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("buffer %d: a read waited for bytes that were never written", size)
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("buffer %d: read %q, want %q", size, got.Bytes(), want.Bytes())
		}
		if size == 4096 && reads > len(bodies) {
			t.Errorf("buffer %d: %d reads for %d messages, want one each", size, reads, len(bodies))
		}
	}
}

// A read returns the message it has, rather than wait for the next one,
// which its writer has not sent.
func TestEnvelopedBodyDoesNotWaitForTheNextMessage(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		for _, w := range envelope([]byte("acquire m/1")) {
			pw.Write(w)
		}
	}()
	body := &envelopedBody{body: pr}
	got := make(chan int)
	go func() {
		n, _ := body.Read(make([]byte, 4096))
		got <- n
	}()
	select {
	case n := <-got:
		if n != 5+len("acquire m/1") {
			t.Fatalf("read %d bytes, want the whole message, %d", n, 5+len("acquire m/1"))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the read waited for a message never written")
	}
}
