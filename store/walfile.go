package store

import (
	"strings"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// walFS has pebble's write-ahead logs preallocated to their full size.
//
// Pebble reserves a log's blocks ahead of its writes with
// FALLOC_FL_KEEP_SIZE, so every append still moves the end of the file,
// and an fdatasync after it must commit that size change to the
// filesystem's journal along with the data. A log whose space is
// allocated with its size, as etcd's WAL and RocksDB's
// fallocate_with_keep_size=false have it, is overwritten in place: its
// fdatasync flushes data and extent state, not the inode size. Every
// commit waits for such a sync on a quorum of members.
//
// Recovery reads the zeroed space after the last record as the log's end,
// as it reads a recycled log's stale tail; the log's sync-offset chunks
// (FormatValueSeparation) tell that from lost synced data.
type walFS struct{ vfs.FS }

func (fs walFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, category)
	return wrapWAL(name, f), err
}

func (fs walFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, category)
	return wrapWAL(newname, f), err
}

func wrapWAL(name string, f vfs.File) vfs.File {
	if f == nil || !strings.HasSuffix(name, ".log") {
		return f
	}
	return walFile{f}
}

type walFile struct{ vfs.File }

// Preallocate allocates the range and extends the file over it where the
// platform can (see allocate). Elsewhere, or when that fails (a filesystem
// without it, no space), it does what pebble would, which may fail too:
// pebble ignores a failed preallocation.
func (f walFile) Preallocate(offset, length int64) error {
	if fd := f.Fd(); fd != vfs.InvalidFd {
		if err := allocate(fd, offset, length); err == nil {
			return nil
		}
	}
	return f.File.Preallocate(offset, length)
}
