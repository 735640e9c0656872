package server

import (
	"context"
	"crypto/sha256"

	"connectrpc.com/connect"
	"github.com/lockd-io/lockd/locks"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
)

// snapshotChunk is the most table data one SnapshotChunk carries.
const snapshotChunk = 1 << 20

func (h *clusterHandler) Snapshot(ctx context.Context, _ *connect.Request[lockdv1.SnapshotRequest], stream *connect.ServerStream[lockdv1.SnapshotChunk]) error {
	// Linearizable: the copy includes everything acknowledged before the
	// call.
	if err := h.s.read(ctx, false); err != nil {
		return err
	}
	data, err := h.s.table.Snapshot()
	if err != nil {
		return connect.NewError(connect.CodeInternal, err)
	}
	rev, err := locks.SnapshotRevision(data)
	if err != nil {
		return connect.NewError(connect.CodeInternal, err)
	}
	sum := sha256.Sum256(data)
	for off := 0; off == 0 || off < len(data); off += snapshotChunk {
		c := &lockdv1.SnapshotChunk{Data: data[off:min(off+snapshotChunk, len(data))]}
		if off == 0 {
			c.Revision, c.Size = rev, uint64(len(data))
		}
		if off+snapshotChunk >= len(data) {
			c.Sha256 = sum[:]
		}
		if err := stream.Send(c); err != nil {
			return err
		}
	}
	return nil
}
