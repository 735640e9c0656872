package main

import (
	"os"
	"testing"

	"github.com/lockd-io/lockd/internal/testcluster"
)

// lockdBin is the lockd binary the process tests run, built once.
var lockdBin string

func TestMain(m *testing.M) {
	if os.Getenv("LOCKD_HELPER") == "holder" {
		helperHolder() // a client process for a test, not the tests
		return
	}
	testcluster.Main(m, &lockdBin)
}

type proc = testcluster.Proc

var (
	freeAddrs  = testcluster.FreeAddrs
	eventually = testcluster.Eventually
	leaderOf   = testcluster.LeaderOf
)

func startProc(t testing.TB, name, dir, addr string, args ...string) *proc {
	return testcluster.Start(t, lockdBin, name, dir, addr, args...)
}

func startCluster(t testing.TB, size int, extra ...string) []*proc {
	return testcluster.StartCluster(t, lockdBin, size, extra...)
}
