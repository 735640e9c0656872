package main

import (
	"bytes"
	"io"
	"net"
	"testing"
)

// Bytes the buffer read ahead are not lost to a reader that switches from
// Read to io.Copy (which uses WriteTo, TCPConn's splice path).
func TestBufferedConnKeepsWhatItReadAhead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	bl := bufferedListener{ln}
	want := bytes.Repeat([]byte("0123456789"), 1000)
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return
		}
		c.Write(want)
		c.Close()
	}()
	c, err := bl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(interface {
		SetKeepAliveConfig(net.KeepAliveConfig) error
	}); !ok {
		t.Fatal("the buffered connection lost its TCP settings")
	}
	head := make([]byte, 9)
	if _, err := io.ReadFull(c, head); err != nil {
		t.Fatal(err)
	}
	var rest bytes.Buffer
	if _, err := io.Copy(&rest, c); err != nil {
		t.Fatal(err)
	}
	if got := append(head, rest.Bytes()...); !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want %d, or they differ", len(got), len(want))
	}
}
