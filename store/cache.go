package store

import (
	pb "go.etcd.io/raft/v3/raftpb"
)

// cachedEntry is an entry with its encoded size, which Entries needs for
// maxSize and the cache needs for its byte budget.
type cachedEntry struct {
	e    *pb.Entry
	size uint64
}

// entryCache holds a contiguous run of the most recent entries, always ending
// at the store's last index, bounded by the sum of their encoded sizes. Raft
// reads the tail far more than the rest (appends to followers, Term checks at
// the end of the log), so those reads never reach pebble.
//
// Entries are shared, not copied: raft's contract makes them immutable for
// both the storage and its caller.
type entryCache struct {
	ents  []cachedEntry
	bytes uint64
	limit uint64
}

// first returns the index of the first cached entry, or 0 when empty.
func (c *entryCache) first() uint64 {
	if len(c.ents) == 0 {
		return 0
	}
	return c.ents[0].e.GetIndex()
}

// get returns the cached entry at index i, if cached.
func (c *entryCache) get(i uint64) (cachedEntry, bool) {
	if len(c.ents) == 0 {
		return cachedEntry{}, false
	}
	f := c.ents[0].e.GetIndex()
	if i < f || i-f >= uint64(len(c.ents)) {
		return cachedEntry{}, false
	}
	return c.ents[i-f], true
}

// append adds a contiguous run ents that the log now ends with. Cached entries
// at or after ents[0] are replaced; if ents does not connect to the cached run
// the cache restarts from ents.
func (c *entryCache) append(ents []cachedEntry) {
	if len(ents) == 0 {
		return
	}
	start := ents[0].e.GetIndex()
	if f := c.first(); len(c.ents) > 0 && start >= f && start <= f+uint64(len(c.ents)) {
		c.truncateFrom(start)
	} else {
		c.reset()
	}
	for _, ce := range ents {
		c.ents = append(c.ents, ce)
		c.bytes += ce.size
	}
	c.evict()
}

// truncateFrom drops cached entries with index >= i.
func (c *entryCache) truncateFrom(i uint64) {
	f := c.first()
	if len(c.ents) == 0 || i >= f+uint64(len(c.ents)) {
		return
	}
	keep := 0
	if i > f {
		keep = int(i - f)
	}
	for j := keep; j < len(c.ents); j++ {
		c.bytes -= c.ents[j].size
		c.ents[j] = cachedEntry{}
	}
	c.ents = c.ents[:keep]
}

// dropTo drops cached entries with index <= i (after a compaction).
func (c *entryCache) dropTo(i uint64) {
	n := 0
	for n < len(c.ents) && c.ents[n].e.GetIndex() <= i {
		n++
	}
	c.dropFront(n)
}

// evict drops the oldest entries until the cache fits its budget.
func (c *entryCache) evict() {
	n := 0
	for b := c.bytes; b > c.limit && n < len(c.ents); n++ {
		b -= c.ents[n].size
	}
	c.dropFront(n)
}

func (c *entryCache) dropFront(n int) {
	if n == 0 {
		return
	}
	if n == len(c.ents) {
		c.reset()
		return
	}
	for j := 0; j < n; j++ {
		c.bytes -= c.ents[j].size
		c.ents[j] = cachedEntry{} // let the GC have it; returned slices are copies
	}
	c.ents = c.ents[n:]
}

func (c *entryCache) reset() {
	clear(c.ents)
	c.ents = c.ents[:0]
	c.bytes = 0
}
