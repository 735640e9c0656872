// Package store keeps a lockd node's raft state in pebble: it implements
// raft.Storage for go.etcd.io/raft/v3 and is the one place that decides what
// is written, in which batch, and what is synced.
//
// # Key layout
//
// Every key starts with a one-byte kind, so kinds never interleave and the log
// can be cleared with a range delete that cannot reach anything else:
//
//	"h"              raftpb.HardState (term, vote, commit)
//	"l" + uint64 BE  raftpb.Entry at that index (proto.Marshal); big-endian so
//	                 that byte order is index order
//	"m" + name       node metadata (SetMeta/GetMeta); raft writes never touch it
//	"s"              the latest raftpb.Snapshot: metadata (index, term,
//	                 ConfState) and the state machine's data in one value
//	"t"              16 bytes, index and term (big-endian) of the last
//	                 discarded entry: FirstIndex-1, whose term Term must still
//	                 answer; absent means (0, 0)
//	"v"              layout version (1), written when the store is created
//
// The log keys are exactly "t".index+1 through LastIndex, without gaps. The
// compacted index never passes the snapshot index, and the log always reaches
// the snapshot index with the snapshot's term there. Open walks the whole log
// (index and term only) and checks all of this, returning an error wrapping
// ErrCorrupt if anything is off, so damage is reported at startup rather than
// as a raft panic later.
//
// # What is synced, and when
//
// Every write is one pebble batch committed with pebble.Sync: when Save,
// CreateSnapshot, Compact or SetMeta returns nil, its effect is on disk, and a
// crash at any moment leaves either all of a call's writes or none of them.
//   - Save writes one raft Ready: snapshot install (range delete of the whole
//     log, snapshot, truncated state), entries (with the deletion of any
//     replaced tail) and HardState, in that order, in one batch. The HardState
//     shares the batch with the entries it may commit, so a vote or a commit
//     index is never durable without the log it refers to. A Ready with
//     nothing to persist writes nothing and does not sync. SaveReady skips
//     the fsync for a Ready raft does not need synced (only the commit index
//     moved): that batch becomes durable with the next synced one, and a
//     crash before then loses only a commit index raft recomputes.
//   - CreateSnapshot writes the snapshot key.
//   - Compact writes a range delete of the discarded entries and the new
//     truncated state. Losing it would be harmless, but syncing it keeps the
//     rule simple: what a call wrote is durable when it returns.
//   - SetMeta writes one meta key.
//
// Pebble's WAL is on; the synced WAL is what makes a batch durable.
//
// # Memory
//
// FirstIndex, LastIndex, the HardState and the snapshot metadata (with its
// ConfState) live in memory, so those answers never touch pebble. The newest
// entries, up to Options.CacheBytes of encoded size, are cached; Term and
// Entries read pebble only for older entries. Snapshot reads its value from
// pebble, since the data may be large.
//
// # Concurrency
//
// A Store is safe for concurrent use: raft may read while the node goroutine
// saves. Writers are serialized. A write that only appends past the last
// index (the common Ready) commits and fsyncs without blocking readers and
// then publishes the new state; a write that deletes or replaces existing log
// entries (tail conflict, snapshot install, Compact) excludes readers for the
// duration of its commit, so no reader ever sees half of it.
package store
