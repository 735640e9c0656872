// Package node runs one member of a lockd raft cluster.
//
// A Node owns a raft.RawNode on a single goroutine (the raft loop), run with
// raft's asynchronous storage writes. Each turn of the loop takes the inputs
// that arrived (ticks, proposals, peer messages, read requests, the storage
// goroutines' responses) and handles raft's Ready:
//
//  1. messages to peers go out at once: a leader's new entries reach its
//     followers while it writes them itself (raft thesis §10.2.1);
//  2. the log append (entries, hard state, any incoming snapshot) goes to
//     the appender, a goroutine that writes every append queued during its
//     previous fsync as one synced pebble batch (group commit) and only then
//     delivers the append's responses: a follower's acknowledgement or vote
//     to its peer, raft's note that the entries are stable to the loop;
//  3. configuration changes among the committed entries are applied to raft;
//  4. the committed entries, which raft hands out only once they are on this
//     node's disk, go to the applier.
//
// The loop does not wait for the disk, so a leader steps acknowledgements
// and commits while its own fsync runs. (Only raft's reads of the log wait
// out a write that replaces entries or installs a snapshot: the store locks
// readers out of such a write until it is synced.)
//
// The applier is a goroutine of its own: it applies committed entries to the
// StateMachine in log order, answers the proposals waiting on them with the
// state machine's result, lets the loop release the linearizable reads whose
// read index it reached, and takes a snapshot (and compacts the log) when
// enough entries have been applied since the last one. A slow apply or a
// long snapshot of a large table thus delays answers, never raft's
// heartbeats, elections or writes; while the applier is far behind, the loop
// takes no new proposals.
//
// A proposal whose leader goes (it was forwarded to a leader that died, or
// this node lost its leadership) fails at once with ErrLeaderChanged, its
// outcome unknown, instead of waiting out its caller's timeout.
//
// A request that finds no leader waits out an election under way (up to two
// election timeouts after this node lost its leader) and is served by the
// new leader, as etcd holds its proposals; a node cut off from a quorum for
// longer refuses at once with ErrNoLeader, so clients go elsewhere. When a
// leader's process is gone (its port refuses connections after its stream
// ended), followers do not wait out an election timeout of silence: they
// leave its lease and campaign within a fifth of a timeout (leader.go).
//
// The node never imports the lock table: it drives the small StateMachine
// interface, whose commands and results are opaque to it. Peers talk over
// raw streams upgraded from HTTP/1.1 on the node's one port (see transport);
// faults can be injected in that path for tests.
package node
