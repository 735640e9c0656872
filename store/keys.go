package store

import (
	"encoding/binary"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// Key layout. Every key starts with one byte that says what it holds, so the
// kinds never interleave and the log can be cleared with one range delete
// that cannot reach the others. See doc.go for the full picture.
const (
	prefixHardState = 'h' // "h": raftpb.HardState
	prefixLog       = 'l' // "l" + big-endian uint64 index: raftpb.Entry
	prefixMeta      = 'm' // "m" + name: opaque node metadata (SetMeta)
	prefixSnapshot  = 's' // "s": raftpb.Snapshot, metadata and data together
	prefixTrunc     = 't' // "t": index and term of the last discarded entry
	prefixVersion   = 'v' // "v": layout version, written when the store is created
)

// layoutVersion is the value of the version key. Bump it (and teach Open to
// migrate) whenever the meaning of a key changes.
const layoutVersion = 1

var (
	keyHardState = []byte{prefixHardState}
	keySnapshot  = []byte{prefixSnapshot}
	keyTrunc     = []byte{prefixTrunc}
	keyVersion   = []byte{prefixVersion}

	// logStart and logEnd bound every log key: [logStart, logEnd).
	logStart = []byte{prefixLog}
	logEnd   = []byte{prefixLog + 1}
)

const logKeyLen = 1 + 8

// logKey returns the key of the entry at index i. Big-endian makes byte order
// equal index order, so iterators walk the log in order.
func logKey(i uint64) []byte {
	return appendLogKey(make([]byte, 0, logKeyLen), i)
}

func appendLogKey(dst []byte, i uint64) []byte {
	dst = append(dst, prefixLog)
	return binary.BigEndian.AppendUint64(dst, i)
}

// decodeLogKey returns the index of log key k.
func decodeLogKey(k []byte) (uint64, error) {
	if len(k) != logKeyLen || k[0] != prefixLog {
		return 0, fmt.Errorf("%w: malformed log key %x", ErrCorrupt, k)
	}
	return binary.BigEndian.Uint64(k[1:]), nil
}

func metaKey(name string) []byte {
	k := make([]byte, 0, 1+len(name))
	k = append(k, prefixMeta)
	return append(k, name...)
}

// truncState is the entry just before the first one kept in the log: its
// index is FirstIndex-1, and its term must stay answerable by Term.
type truncState struct {
	index, term uint64
}

func (t truncState) encode() []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint64(b, t.index)
	binary.BigEndian.PutUint64(b[8:], t.term)
	return b
}

func decodeTrunc(b []byte) (truncState, error) {
	if len(b) != 16 {
		return truncState{}, fmt.Errorf("%w: truncated state has %d bytes, want 16", ErrCorrupt, len(b))
	}
	return truncState{
		index: binary.BigEndian.Uint64(b),
		term:  binary.BigEndian.Uint64(b[8:]),
	}, nil
}

// Field numbers of raftpb.Entry (raft.proto).
const (
	entryFieldTerm  = 2
	entryFieldIndex = 3
)

// entryIndexTerm reads the index and term of an encoded raftpb.Entry without
// unmarshalling its data, so Term and Open need not copy payloads.
func entryIndexTerm(b []byte) (index, term uint64, err error) {
	hasIndex := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, 0, fmt.Errorf("%w: bad entry encoding: %v", ErrCorrupt, protowire.ParseError(n))
		}
		b = b[n:]
		if (num == entryFieldTerm || num == entryFieldIndex) && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return 0, 0, fmt.Errorf("%w: bad entry encoding: %v", ErrCorrupt, protowire.ParseError(m))
			}
			b = b[m:]
			if num == entryFieldTerm {
				term = v
			} else {
				index, hasIndex = v, true
			}
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return 0, 0, fmt.Errorf("%w: bad entry encoding: %v", ErrCorrupt, protowire.ParseError(m))
		}
		b = b[m:]
	}
	if !hasIndex {
		return 0, 0, fmt.Errorf("%w: entry has no index", ErrCorrupt)
	}
	return index, term, nil
}
