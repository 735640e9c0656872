package store

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

// TestWALPreallocatedCrashRestart writes through a store on the real
// filesystem, whose log files are preallocated to their full size, and
// reopens a copy of its directory taken while it was open, as a process
// crash would leave it (the page cache survives it; a power cut is not
// modelled), several times over: every synced entry is there each time,
// the zeroed tails of the logs before notwithstanding.
func TestWALPreallocatedCrashRestart(t *testing.T) {
	model := raft.NewMemoryStorage()
	dir := filepath.Join(t.TempDir(), "gen0")
	checkSize := runtime.GOOS == "linux" && canAllocate(t, filepath.Dir(dir))
	s := openStore(t, vfs.Default, dir, 0)
	next := uint64(1)
	for gen := 1; gen <= 4; gen++ {
		// Pebble preallocates a log at its second write: several saves.
		for range 5 {
			batch := ents(next, next+10, uint64(gen))
			next += 10
			hs := hardState(uint64(gen), 1, next-5)
			if err := s.Save(hs, batch, nil); err != nil {
				t.Fatalf("gen %d: Save: %v", gen, err)
			}
			if err := model.Append(batch); err != nil {
				t.Fatal(err)
			}
			if err := model.SetHardState(hs); err != nil {
				t.Fatal(err)
			}
		}
		if checkSize {
			if size := largestLog(t, dir); size < memTableSize {
				t.Fatalf("gen %d: largest log is %d bytes; want it preallocated to the memtable's size", gen, size)
			}
		}
		crashed := filepath.Join(filepath.Dir(dir), fmt.Sprintf("gen%d", gen))
		copyDir(t, dir, crashed)
		mustClose(t, s)
		dir = crashed
		s = openStore(t, vfs.Default, dir, 0)
		got, err := capture(s)
		if err != nil {
			t.Fatalf("gen %d: %v", gen, err)
		}
		want, err := capture(model)
		if err != nil {
			t.Fatal(err)
		}
		if d := diff(got, want); d != "" {
			t.Fatalf("gen %d, after the crash: %s", gen, d)
		}
	}
}

// canAllocate reports whether dir's filesystem extends a file by
// fallocate mode 0; where it does not, logs are reserved as pebble does.
func canAllocate(t *testing.T, dir string) bool {
	f, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := allocate(f.Fd(), 0, 4096); err != nil {
		t.Logf("fallocate mode 0 in %s: %v; not checking log sizes", dir, err)
		return false
	}
	return true
}

func largestLog(t *testing.T, dir string) int64 {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no log in %s: %v", dir, err)
	}
	var largest int64
	for _, n := range names {
		fi, err := os.Stat(n)
		if err != nil {
			t.Fatal(err)
		}
		largest = max(largest, fi.Size())
	}
	return largest
}

// copyDir copies dir's files to a new directory to, as they are now.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		src, err := os.Open(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		dst, err := os.Create(filepath.Join(to, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(dst, src); err != nil {
			t.Fatal(err)
		}
		src.Close()
		if err := dst.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// crashChildDir, set in a child's environment, makes
// TestWALKilledWhileWriting the child: it writes into the store there
// until it is killed.
const crashChildDir = "LOCKD_STORE_CRASH_CHILD_DIR"

// TestWALKilledWhileWriting SIGKILLs a process that writes 64 KiB entries
// through a store, syncing each save, somewhere across its logs' rotations
// (every memTableSize) and the flushes that follow them, and reopens the
// store: every save the child reported done is there, intact. The logs
// closed at rotation end in pebble's EOF trailer and then preallocated
// zeros; recovery must read them as cleanly closed.
func TestWALKilledWhileWriting(t *testing.T) {
	if dir := os.Getenv(crashChildDir); dir != "" {
		crashChild(dir)
		return
	}
	if runtime.GOOS != "linux" {
		t.Skip("kills a child process; run on Linux")
	}
	rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
	for round := range 3 {
		dir := filepath.Join(t.TempDir(), "db")
		killAt := uint64(300 + rng.IntN(900)) // 19-75 MiB written
		cmd := exec.Command(os.Args[0], "-test.run=^TestWALKilledWhileWriting$")
		cmd.Env = append(os.Environ(), crashChildDir+"="+dir)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var acked uint64
		lines := bufio.NewScanner(out)
		for lines.Scan() {
			n, err := strconv.ParseUint(lines.Text(), 10, 64)
			if err != nil {
				continue // the test framework's own output
			}
			acked = n
			if acked >= killAt {
				break
			}
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if acked < killAt {
			t.Fatalf("round %d: the child stopped at entry %d before it was killed", round, acked)
		}
		s := openStore(t, vfs.Default, dir, 0)
		last, err := s.LastIndex()
		if err != nil {
			t.Fatal(err)
		}
		if last < acked {
			t.Fatalf("round %d: last index %d after the crash; %d were acknowledged", round, last, acked)
		}
		got, err := s.Entries(1, acked+1, noLimit)
		if err != nil {
			t.Fatalf("round %d: Entries(1, %d): %v", round, acked+1, err)
		}
		for i, e := range got {
			if want := crashEntry(uint64(i) + 1); e.GetIndex() != want.GetIndex() || !bytes.Equal(e.GetData(), want.GetData()) {
				t.Fatalf("round %d: entry %d differs after the crash", round, i+1)
			}
		}
		mustClose(t, s)
		t.Logf("round %d: killed after %d entries (%d MiB); %d found", round, acked, acked/16, last)
	}
}

// crashChild saves entries until it is killed, printing each index once
// its save has returned.
func crashChild(dir string) {
	s, err := Open(dir, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := uint64(1); i <= 4000; i++ {
		if err := s.Save(hardState(1, 1, i), []*pb.Entry{crashEntry(i)}, nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Println(i)
	}
	os.Exit(3) // never killed: the parent reports it
}

func crashEntry(i uint64) *pb.Entry {
	e := ent(i, 1, "")
	e.Data = bytes.Repeat([]byte{byte(i), byte(i >> 8)}, 32<<10)
	return e
}
