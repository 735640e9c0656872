package store

import "golang.org/x/sys/unix"

// allocate is fallocate(2) with mode 0: blocks allocated and the file's
// size extended to cover them.
func allocate(fd uintptr, offset, length int64) error {
	return unix.Fallocate(int(fd), 0, offset, length)
}
