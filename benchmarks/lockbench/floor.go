package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// floor measures what any replicated lock service must pay for one acquire
// on this machine, each part alone: the cheapest call its server answers (no
// raft, no disk), an fdatasync of a small append in dir, and a loopback TCP
// round trip. Their sum is the floor the acquire's p50 is compared with.
func floor(sys system, dir string, n int) result {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var rpc, sync, rtt []time.Duration
	for range n {
		t := time.Now()
		if err := sys.floorCall(ctx); err != nil {
			fail(err)
		}
		rpc = append(rpc, time.Since(t))
	}
	f, err := os.CreateTemp(dir, "lockbench-fsync-*")
	if err != nil {
		fail(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	rec := make([]byte, 128)
	for range n {
		t := time.Now()
		if _, err := f.Write(rec); err != nil {
			fail(err)
		}
		if err := fdatasync(f); err != nil {
			fail(err)
		}
		sync = append(sync, time.Since(t))
	}
	// The echo runs in a process of its own, as a peer would.
	echo := exec.Command(os.Args[0], "-workload", "echo")
	echo.Stderr = os.Stderr
	out, err := echo.StdoutPipe()
	if err != nil {
		fail(err)
	}
	if err := echo.Start(); err != nil {
		fail(err)
	}
	defer echo.Wait()
	defer echo.Process.Kill()
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		fail(fmt.Errorf("echo process: %w", err))
	}
	c, err := net.Dial("tcp", strings.TrimSpace(addr))
	if err != nil {
		fail(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	for range n {
		t := time.Now()
		if _, err := c.Write(buf); err != nil {
			fail(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			fail(err)
		}
		rtt = append(rtt, time.Since(t))
	}
	r := result{Ops: int64(n), RPCus: p50us(rpc), FsyncUs: p50us(sync), RTTus: p50us(rtt)}
	r.P50us = r.RPCus + r.FsyncUs + r.RTTus
	return r
}

func p50us(d []time.Duration) int64 {
	slices.Sort(d)
	return d[len(d)/2].Microseconds()
}

// echoMain serves one TCP connection on loopback, echoing what it reads;
// it prints its address first.
func echoMain() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	fmt.Println(ln.Addr())
	c, err := ln.Accept()
	if err != nil {
		fail(err)
	}
	io.Copy(c, c)
}

// fsyncDir is where floor measures fsync: the directory given, or the
// system's temp dir.
func fsyncDir(dir string) string {
	if dir == "" {
		return os.TempDir()
	}
	return filepath.Clean(dir)
}
