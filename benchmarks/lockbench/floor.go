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
//
// It also measures what members that share one disk pay for the fsync: a
// commit waits until a quorum of them has its entry on disk, and they all
// write it at about the same time. So members appenders, one file each in
// dir, append and fdatasync at once, and the time until a quorum of them
// is done is the shared-disk fsync.
func floor(sys system, dir string, members, n int) result {
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
	quorum := quorumFsync(dir, members, n)
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
	r := result{Ops: int64(n), RPCus: p50us(rpc), FsyncUs: p50us(sync), RTTus: p50us(rtt), QuorumFsyncUs: p50us(quorum)}
	r.P50us = r.RPCus + r.FsyncUs + r.RTTus
	return r
}

// quorumFsync returns, for n rounds, how long members appenders took, each
// appending 128 bytes to a file of its own in dir and fdatasyncing it, all
// at once, until a quorum of them was done. A round waits for all of them
// before the next begins.
func quorumFsync(dir string, members, n int) []time.Duration {
	files := make([]*os.File, members)
	for i := range files {
		f, err := os.CreateTemp(dir, "lockbench-quorum-*")
		if err != nil {
			fail(err)
		}
		defer os.Remove(f.Name())
		defer f.Close()
		files[i] = f
	}
	rec := make([]byte, 128)
	done := make(chan error, members)
	out := make([]time.Duration, 0, n)
	for range n {
		t := time.Now()
		for _, f := range files {
			go func() {
				_, err := f.Write(rec)
				if err == nil {
					err = fdatasync(f)
				}
				done <- err
			}()
		}
		for i := range members {
			if err := <-done; err != nil {
				fail(err)
			}
			if i+1 == members/2+1 {
				out = append(out, time.Since(t))
			}
		}
	}
	return out
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
