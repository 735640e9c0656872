//go:build !linux

package store

import "errors"

// allocate is not done outside Linux; the caller falls back to pebble's
// own preallocation.
func allocate(uintptr, int64, int64) error {
	return errors.ErrUnsupported
}
