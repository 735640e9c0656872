package locks

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Snapshot encodes the whole table. The encoding is deterministic: equal
// tables give equal bytes.
//
// It encodes one record at a time into a buffer sized up front, rather than
// building the whole statev1.Snapshot first: a table of a million locks
// would otherwise need a second, short-lived copy of itself as protobuf
// objects (hundreds of MiB) on top of the encoded bytes.
func (t *Table) Snapshot() ([]byte, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	e := snapshotEncoder{
		buf:  make([]byte, 0, 64*(len(t.locks)+len(t.leases)+len(t.waiters))+64),
		opts: proto.MarshalOptions{Deterministic: true},
	}
	e.uint64Field(snapRevision, t.rev)
	e.uint64Field(snapTerm, t.term)
	ids := make([]uint64, 0, len(t.leases))
	for id := range t.leases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var pl statev1.Lease
	for _, id := range ids {
		l := t.leases[id]
		pl = statev1.Lease{Id: l.id, TtlMs: l.ttl.Milliseconds(), Owner: l.owner, GrantedRevision: l.grantedRev, Dedup: l.dedup, Principal: l.principal}
		if err := e.message(snapLease, &pl); err != nil {
			return nil, err
		}
	}
	var lk statev1.Lock
	var holders []statev1.Holder
	// Sorted by name, for snapshots that are equal bytes on every replica.
	// Sorting (name, lock) pairs spares the map lookup per name that
	// sorting the names alone costs: a fifth of the time for a million.
	type named struct {
		name string
		l    *lock
	}
	sorted := make([]named, 0, len(t.locks))
	for name, l := range t.locks {
		sorted = append(sorted, named{name, l})
	}
	slices.SortFunc(sorted, func(a, b named) int { return strings.Compare(a.name, b.name) })
	for _, n := range sorted {
		l := n.l
		lk = statev1.Lock{Name: l.name, Capacity: l.capacity, LockDelayMs: l.delay.Milliseconds(),
			DelayedUntilUnixNano: l.delayedUntil, DelayReason: l.delayReason, DelayRevision: l.delayRev}
		holders = slices.Grow(holders[:0], len(l.holders))[:len(l.holders)]
		for i, h := range l.holders {
			holders[i] = statev1.Holder{LeaseId: h.lease.id, Token: h.token, Mode: int32(h.mode), Value: h.value, WaiterId: h.waiterID, Attempt: h.attempt, RequestId: h.requestID}
			lk.Holders = append(lk.Holders, &holders[i])
		}
		for _, w := range l.queue {
			lk.Queue = append(lk.Queue, w.id)
		}
		if err := e.message(snapLock, &lk); err != nil {
			return nil, err
		}
	}
	var pw statev1.Waiter
	for _, w := range sortedWaiters(t.waiters) {
		pw = statev1.Waiter{Id: w.id, LeaseId: w.lease.id, Names: w.names, Mode: int32(w.mode), Value: w.value, RequestId: w.requestID, Attempt: w.attempt}
		if err := e.message(snapWaiter, &pw); err != nil {
			return nil, err
		}
	}
	return e.buf, nil
}

// snapshotEncoder appends the fields of a statev1.Snapshot as proto.Marshal
// would: scalars that are zero are left out.
type snapshotEncoder struct {
	buf  []byte
	opts proto.MarshalOptions
}

func (e *snapshotEncoder) uint64Field(num protowire.Number, v uint64) {
	if v != 0 {
		e.buf = protowire.AppendTag(e.buf, num, protowire.VarintType)
		e.buf = protowire.AppendVarint(e.buf, v)
	}
}

func (e *snapshotEncoder) message(num protowire.Number, m proto.Message) error {
	e.buf = protowire.AppendTag(e.buf, num, protowire.BytesType)
	e.buf = protowire.AppendVarint(e.buf, uint64(e.opts.Size(m)))
	var err error
	e.buf, err = e.opts.MarshalAppend(e.buf, m)
	return err
}

// Restore replaces the table with a snapshot's contents. On error the table
// is unchanged.
//
// Like Snapshot, it works one record at a time instead of decoding the
// whole statev1.Snapshot: a million decoded locks would sit in the heap
// beside the table built from them, and a node restarting under a memory
// limit would spend its time collecting garbage. It reads the encoding
// three times, for the leases, the waiters (of leases) and the locks (held
// by leases, queueing waiters), which may come in any order, and sizes the
// lock map up front.
func (t *Table) Restore(data []byte) error {
	n := NewTable()
	nlocks := 0
	err := eachSnapshotField(data, func(num protowire.Number, v uint64, b []byte) error {
		switch num {
		case snapRevision:
			n.rev = v
		case snapTerm:
			n.term = v
		case snapLease:
			pl := new(statev1.Lease)
			if err := proto.Unmarshal(b, pl); err != nil {
				return err
			}
			n.leases[pl.GetId()] = &lease{id: pl.GetId(), ttl: time.Duration(pl.GetTtlMs()) * time.Millisecond, owner: pl.GetOwner(), principal: pl.GetPrincipal(),
				grantedRev: pl.GetGrantedRevision(), holds: map[string]*holder{}, waits: map[uint64]*waiter{}, dedup: pl.GetDedup()}
			if p := pl.GetPrincipal(); p != "" {
				n.byWhom[p]++
			}
		case snapLock:
			nlocks++
		}
		return nil
	})
	if err == nil {
		err = eachSnapshotField(data, func(num protowire.Number, _ uint64, b []byte) error {
			if num != snapWaiter {
				return nil
			}
			pw := new(statev1.Waiter)
			if err := proto.Unmarshal(b, pw); err != nil {
				return err
			}
			l, ok := n.leases[pw.GetLeaseId()]
			if !ok {
				return fmt.Errorf("waiter %d of unknown lease %d", pw.GetId(), pw.GetLeaseId())
			}
			w := &waiter{id: pw.GetId(), lease: l, names: pw.GetNames(), mode: Mode(pw.GetMode()), attempt: pw.GetAttempt(), value: pw.GetValue(), requestID: pw.GetRequestId()}
			n.waiters[w.id] = w
			l.waits[w.id] = w
			return nil
		})
	}
	if err != nil {
		return fmt.Errorf("locks: bad snapshot: %w", err)
	}
	n.locks = make(map[string]*lock, nlocks)
	var pl statev1.Lock // reused: only the strings and bytes it decodes are kept
	err = eachSnapshotField(data, func(num protowire.Number, _ uint64, b []byte) error {
		if num != snapLock {
			return nil
		}
		if err := proto.Unmarshal(b, &pl); err != nil {
			return err
		}
		lk := &lock{name: pl.GetName(), capacity: pl.GetCapacity(), delay: time.Duration(pl.GetLockDelayMs()) * time.Millisecond,
			delayedUntil: pl.GetDelayedUntilUnixNano(), delayReason: pl.GetDelayReason(), delayRev: pl.GetDelayRevision()}
		for _, ph := range pl.GetHolders() {
			l, ok := n.leases[ph.GetLeaseId()]
			if !ok {
				return fmt.Errorf("holder of %q has unknown lease %d", lk.name, ph.GetLeaseId())
			}
			h := &holder{lease: l, token: ph.GetToken(), mode: Mode(ph.GetMode()), attempt: ph.GetAttempt(), value: ph.GetValue(), waiterID: ph.GetWaiterId(), requestID: ph.GetRequestId()}
			lk.holders = append(lk.holders, h)
			l.holds[lk.name] = h
		}
		for _, id := range pl.GetQueue() {
			w, ok := n.waiters[id]
			if !ok {
				return fmt.Errorf("queue of %q has unknown waiter %d", lk.name, id)
			}
			lk.queue = append(lk.queue, w)
			n.nsWaits[Namespace(lk.name)]++
		}
		n.locks[lk.name] = lk
		return nil
	})
	if err != nil {
		return fmt.Errorf("locks: bad snapshot: %w", err)
	}
	t.mu.Lock()
	t.rev, t.term = n.rev, n.term
	t.leases, t.locks, t.waiters, t.nsWaits, t.byWhom = n.leases, n.locks, n.waiters, n.nsWaits, n.byWhom
	t.events = nil
	observer := t.observer
	t.mu.Unlock()
	if observer != nil {
		observer([]Event{{Type: Reset, Revision: n.rev}})
	}
	return nil
}

// The fields of statev1.Snapshot, as Snapshot writes them and Restore reads
// them.
const (
	snapRevision protowire.Number = 1
	snapTerm     protowire.Number = 2
	snapLease    protowire.Number = 3
	snapLock     protowire.Number = 4
	snapWaiter   protowire.Number = 5
)

// eachSnapshotField calls fn with each known field of an encoded
// statev1.Snapshot in order: v for the varints, b for the messages. Fields
// it does not know, or of another wire type, are skipped, as proto.Unmarshal
// would keep them aside as unknown.
func eachSnapshotField(data []byte, fn func(num protowire.Number, v uint64, b []byte) error) error {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return protowire.ParseError(n)
		}
		data = data[n:]
		switch {
		case (num == snapRevision || num == snapTerm) && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return protowire.ParseError(n)
			}
			data = data[n:]
			if err := fn(num, v, nil); err != nil {
				return err
			}
		case (num == snapLease || num == snapLock || num == snapWaiter) && typ == protowire.BytesType:
			b, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return protowire.ParseError(n)
			}
			data = data[n:]
			if err := fn(num, 0, b); err != nil {
				return err
			}
		default:
			n := protowire.ConsumeFieldValue(num, typ, data)
			if n < 0 {
				return protowire.ParseError(n)
			}
			data = data[n:]
		}
	}
	return nil
}

// SnapshotRevision reads the revision a snapshot is of, without decoding
// the rest: it stops at the revision, which Snapshot writes first.
func SnapshotRevision(data []byte) (rev uint64, err error) {
	found := errors.New("found")
	err = eachSnapshotField(data, func(num protowire.Number, v uint64, _ []byte) error {
		if num != snapRevision {
			return nil
		}
		rev = v
		return found
	})
	if err != nil && err != found {
		return 0, fmt.Errorf("locks: bad snapshot: %w", err)
	}
	return rev, nil // revision 0 is left out
}

// Reseed prepares a snapshot for a new cluster (a restored backup): it
// keeps every lease, lock, waiter, token and the revision, and forgets the
// raft term the old cluster had reached, since the new cluster's terms
// start again from 1 and expiries stamped with them must not be taken for
// stale.
func Reseed(data []byte) ([]byte, error) {
	t := NewTable()
	if err := t.Restore(data); err != nil {
		return nil, err
	}
	t.term = 0
	return t.Snapshot()
}
