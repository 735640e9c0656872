package store

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

// ErrCorrupt is wrapped by the errors Open (and, for damage found later, the
// read methods) return when the stored state breaks an invariant the store
// maintains: a gap in the log, an entry under the wrong key, a log that does
// not reach the snapshot, undecodable records. Restarting will not fix it;
// the node needs its data directory rebuilt (for example from a snapshot).
var ErrCorrupt = errors.New("store: corrupt raft storage")

// errClosed is returned by calls made after Close.
var errClosed = errors.New("store: closed")

// DefaultCacheBytes is the tail entry cache budget used when
// Options.CacheBytes is 0.
const DefaultCacheBytes = 64 << 20

// memTableSize is pebble's memtable. The log is append-then-delete: a
// larger memtable lets many entries be compacted away before they are ever
// flushed. (Pebble preallocates each write-ahead log to 110% of it.)
const memTableSize = 32 << 20

// diskSlowThreshold only decides when a slow disk operation is reported
// through the logger; nothing is aborted or timed out.
const diskSlowThreshold = 5 * time.Second

// Options configures Open. The zero value is ready to use.
type Options struct {
	// FS is the filesystem the store lives on. nil means vfs.Default (the
	// OS). Tests pass vfs.NewMem() or vfs.NewCrashableMem().
	FS vfs.FS

	// Logger receives pebble's log lines and notable pebble events
	// (background errors, slow disk, write stalls), with component=pebble.
	// The zero value discards everything, like zerolog.Nop().
	Logger zerolog.Logger

	// CacheBytes bounds the total encoded size of the recent entries kept in
	// memory so that Term and Entries near the end of the log never read
	// pebble. 0 means DefaultCacheBytes. Must not be negative.
	CacheBytes int64
}

// Store is a durable raft.Storage on pebble. See the package documentation
// for what is stored where and what is synced when.
//
// All methods are safe for concurrent use. Reads (the raft.Storage methods,
// GetMeta, DiskUsage) run concurrently with each other and, except while a
// write deletes or overwrites log entries, with writes. Writes (Save,
// CreateSnapshot, Compact, SetMeta) are serialized.
type Store struct {
	db       *pebble.DB
	fsCloser io.Closer // stops pebble's disk-health goroutine

	// wmu serializes writers, so each builds its batch from a state that
	// nobody else changes until it has published the result.
	wmu sync.Mutex
	// failed is sticky: once a commit has failed we no longer know what is on
	// disk, so every later write refuses (raft treats a storage error as
	// fatal anyway; restarting recovers from disk). Guarded by wmu.
	failed error
	// scratch is reused for encoding entries. Guarded by wmu.
	scratch []byte

	// mu guards the in-memory mirror of what is on disk. Readers take it
	// shared, also while they read log entries from pebble, so a writer that
	// deletes or overwrites log keys holds it exclusively across its commit.
	// A writer that only adds keys past the last index commits first and
	// takes mu only to publish, so raft's reads never wait for an fsync.
	mu     sync.RWMutex
	closed bool
	hs     *pb.HardState        // nil until one is saved
	snap   *pb.SnapshotMetadata // never nil; ConfState never nil
	trunc  truncState           // FirstIndex-1 and its term
	last   uint64               // LastIndex
	cache  entryCache
}

var _ raft.Storage = (*Store)(nil)

// Open opens the store in dir, creating it if needed, and recovers the raft
// state from it. It returns an error wrapping ErrCorrupt if the stored state
// is inconsistent. The caller must Close the store.
func Open(dir string, opts Options) (*Store, error) {
	if opts.CacheBytes < 0 {
		return nil, fmt.Errorf("store: Options.CacheBytes is negative (%d)", opts.CacheBytes)
	}
	if opts.CacheBytes == 0 {
		opts.CacheBytes = DefaultCacheBytes
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	plog := opts.Logger.With().Str("component", "pebble").Logger()
	listener := eventListener(plog)
	fs, fsCloser := vfs.WithDiskHealthChecks(walFS{opts.FS}, diskSlowThreshold, nil,
		func(info vfs.DiskSlowInfo) { listener.DiskSlow(info) })

	db, err := pebble.Open(dir, &pebble.Options{
		FS: fs,
		// Pinned rather than FormatNewest so that upgrading pebble never
		// silently ratchets the on-disk format, which would block rolling
		// the binary back. Includes WAL sync chunks, which let recovery tell
		// a torn tail write from corruption.
		FormatMajorVersion:          pebble.FormatValueSeparation,
		Logger:                      pebbleLogger{plog},
		EventListener:               listener,
		MemTableSize:                memTableSize,
		MemTableStopWritesThreshold: 4,
	})
	if err != nil {
		_ = fsCloser.Close()
		return nil, fmt.Errorf("store: open pebble in %q: %w", dir, err)
	}
	s := &Store{
		db:       db,
		fsCloser: fsCloser,
		cache:    entryCache{limit: uint64(opts.CacheBytes)},
	}
	if err := s.load(); err != nil {
		_ = db.Close()
		_ = fsCloser.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the store. Everything acknowledged is already durable, so
// Close flushes nothing that matters for recovery. Calls after Close fail;
// a second Close returns nil.
func (s *Store) Close() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.cache.reset()
	err := s.db.Close()
	if cerr := s.fsCloser.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// GetMeta returns the value SetMeta stored under key, or (nil, nil) if there
// is none. The caller owns the returned slice.
func (s *Store) GetMeta(key string) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errClosed
	}
	v, err := s.get(metaKey(key))
	if err != nil {
		return nil, fmt.Errorf("store: get meta %q: %w", key, err)
	}
	return v, nil
}

// SetMeta durably stores value under key (synced before it returns). Meta
// keys live apart from the raft state: no raft write ever touches them.
// A nil value is stored as empty, so GetMeta then returns an empty slice.
func (s *Store) SetMeta(key string, value []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.writable(); err != nil {
		return err
	}
	if err := s.db.Set(metaKey(key), value, pebble.Sync); err != nil {
		s.failed = err
		return fmt.Errorf("store: set meta %q: %w", key, err)
	}
	return nil
}

// DiskUsage returns the bytes pebble uses on disk (WAL, tables, manifest,
// including files not yet deleted). It returns 0 after Close.
func (s *Store) DiskUsage() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return 0
	}
	return s.db.Metrics().DiskSpaceUsage()
}

// get returns a copy of the value at key, or nil if absent.
func (s *Store) get(key []byte) ([]byte, error) {
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := make([]byte, len(v))
	copy(out, v)
	return out, closer.Close()
}

// writable reports why a write must not proceed. Called with wmu held.
func (s *Store) writable() error {
	if s.closed {
		return errClosed
	}
	if s.failed != nil {
		return fmt.Errorf("store: refusing writes after an earlier write failed: %w", s.failed)
	}
	return nil
}
