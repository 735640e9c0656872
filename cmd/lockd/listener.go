package main

import (
	"bufio"
	"io"
	"net"
)

// connReadBuffer is the read buffer each accepted connection gets.
const connReadBuffer = 4 << 10

// bufferedListener gives every connection it accepts a read buffer. Go's
// HTTP/2 server reads each frame straight from the connection, its 9-byte
// header and then its payload, and a Connect client sends a message's
// 5-byte prefix and its body as two frames: four reads, four syscalls, for
// one small message. Through a buffer, whatever arrived together costs one.
// (HTTP/1.1 and TLS read through buffers of their own already.)
type bufferedListener struct{ net.Listener }

func (l bufferedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	return &bufferedConn{TCPConn: tc, r: bufio.NewReaderSize(tc, connReadBuffer)}, nil
}

// bufferedConn is a TCP connection whose reads go through r. Everything
// else, keep-alive settings and CloseWrite included, is the TCPConn's.
type bufferedConn struct {
	*net.TCPConn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// WriteTo is TCPConn's splice path, which would skip what r holds.
func (c *bufferedConn) WriteTo(w io.Writer) (int64, error) { return c.r.WriteTo(w) }
