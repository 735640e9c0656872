package node

import (
	"errors"
	"fmt"
	"strconv"

	peerv1 "github.com/lockd-io/lockd/proto/lockd/peer/v1"
	"github.com/lockd-io/lockd/store"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// seedIndex is the log index (and seedTerm the term) of the snapshot a
// seeded member starts from: every member of the new cluster is seeded
// with the same one, so their logs agree from the start.
const (
	seedIndex = 1
	seedTerm  = 1
)

// Seed prepares an empty store to start member name of a new cluster whose
// members are peers, with state as its state machine's content instead of
// an empty one (a restored backup). Seed every member with the same peers
// and state, then Start them as usual.
func Seed(st *store.Store, name string, peers []Peer, state []byte) error {
	last, err := st.LastIndex()
	if err != nil {
		return err
	}
	snap, err := st.Snapshot()
	if err != nil {
		return err
	}
	if last != 0 || !raft.IsEmptySnap(snap) {
		return errors.New("node: the data dir is not empty")
	}
	var self bool
	env := &peerv1.Snapshot{State: state}
	cs := &raftpb.ConfState{}
	for _, p := range peers {
		id := MemberID(p.Name)
		self = self || p.Name == name
		env.Members = append(env.Members, &peerv1.Member{Id: id, Name: p.Name, Url: p.URL})
		cs.Voters = append(cs.Voters, id)
	}
	if !self {
		return fmt.Errorf("node: member %q is not in the initial cluster", name)
	}
	data, err := proto.Marshal(env)
	if err != nil {
		return err
	}
	if err := st.SetMeta(metaName, []byte(name)); err != nil {
		return err
	}
	if err := st.SetMeta(metaCluster, []byte(strconv.FormatUint(clusterID(peers), 16))); err != nil {
		return err
	}
	return st.SaveReady(
		&raftpb.HardState{Term: new(uint64(seedTerm)), Commit: new(uint64(seedIndex))},
		nil,
		&raftpb.Snapshot{Data: data, Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(seedIndex)), Term: new(uint64(seedTerm)), ConfState: cs}},
		true)
}
