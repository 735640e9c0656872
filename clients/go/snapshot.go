package lockd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
)

// Snapshot copies the whole lock table as of a linearizable point (every
// lease, lock, waiter and token), checks it against the server's SHA-256,
// and writes it to w. It returns the revision the copy is of. Nothing is
// written to w unless the whole copy arrived intact.
func (c *Client) Snapshot(ctx context.Context, w io.Writer) (revision uint64, sum [sha256.Size]byte, err error) {
	var data bytes.Buffer
	err = c.do(ctx, func(ctx context.Context, e *endpoint) error {
		data.Reset()
		stream, err := e.cluster.Snapshot(ctx, connect.NewRequest(&lockdv1.SnapshotRequest{}))
		if err != nil {
			return err
		}
		defer stream.Close()
		var size uint64
		var want []byte
		first := true
		for stream.Receive() {
			m := stream.Msg()
			if first {
				revision, size, first = m.GetRevision(), m.GetSize(), false
				data.Grow(int(min(size, 1<<30)))
			}
			data.Write(m.GetData())
			if len(m.GetSha256()) > 0 {
				want = m.GetSha256()
			}
		}
		if err := stream.Err(); err != nil {
			return err
		}
		sum = sha256.Sum256(data.Bytes())
		switch {
		case first:
			return fmt.Errorf("lockd: the snapshot stream was empty")
		case uint64(data.Len()) != size:
			return fmt.Errorf("lockd: the snapshot has %d bytes, the server announced %d", data.Len(), size)
		case !bytes.Equal(sum[:], want):
			return fmt.Errorf("lockd: the snapshot's checksum does not match the server's")
		}
		return nil
	})
	if err != nil {
		return 0, sum, err
	}
	_, err = w.Write(data.Bytes())
	return revision, sum, err
}
