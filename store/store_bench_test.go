package store

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	pb "go.etcd.io/raft/v3/raftpb"
)

// BenchmarkSave measures one synced Save of a Ready on the real disk (in
// b.TempDir()), with 1 or 16 entries of 128 bytes each and a HardState.
// Compare with BenchmarkFsyncFloor: a Save costs about one fsync.
func BenchmarkSave(b *testing.B) {
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			data := make([]byte, 128)
			batch := make([]*pb.Entry, n)
			next := uint64(1)
			b.SetBytes(int64(n * len(data)))
			b.ReportAllocs()
			for b.Loop() {
				for i := range batch {
					batch[i] = &pb.Entry{Index: new(next), Term: new(uint64(1)), Data: data}
					next++
				}
				if err := s.Save(hardState(1, 1, next-1), batch, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(next-1), "ns/entry")
		})
	}
}

// BenchmarkFsyncFloor measures a raw 128-byte append plus fsync on an
// os.File in b.TempDir(): the least any synced write on this machine costs.
func BenchmarkFsyncFloor(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "floor"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	data := make([]byte, 128)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := f.Write(data); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
}
