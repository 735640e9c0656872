// Package node runs one member of a lockd raft cluster.
//
// A Node owns a raft.RawNode on a single goroutine (the raft loop). Each turn
// of the loop takes the inputs that arrived (ticks, proposals, peer messages,
// read requests), then handles raft's Ready in the order raft requires:
//
//  1. a leader sends its messages first, so followers write the new entries
//     while the leader does (raft thesis §10.2.1);
//  2. the entries, hard state and any incoming snapshot go to the store in one
//     synced batch; every proposal that arrived in the same turn shares that
//     fsync (group commit);
//  3. a follower sends its messages only now, after its log is durable, since
//     its acknowledgements promise durability;
//  4. committed entries are applied to the StateMachine in log order and the
//     proposals waiting on them are answered with the state machine's result;
//  5. linearizable reads whose read index has been applied are released;
//  6. a snapshot is taken and the log compacted when enough entries have been
//     applied since the last one.
//
// The node never imports the lock table: it drives the small StateMachine
// interface, whose commands and results are opaque to it. Peers talk over
// HTTP/2 on the node's one port (see Transport); faults can be injected in
// that path for tests.
package node
