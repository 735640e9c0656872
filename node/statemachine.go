package node

// StateMachine is what a Node replicates. Apply sees every committed command
// exactly once per incarnation of the node, in log order, on the raft loop's
// goroutine; Snapshot and Restore are called on that goroutine too, between
// applies.
//
// A node keeps no state machine on disk: after a restart it restores the
// newest snapshot and applies the log from there, so Apply must be
// deterministic (no clocks, randomness or I/O) and its result must depend only
// on the commands applied before it.
type StateMachine interface {
	// Apply applies the command committed at index by a leader of term and
	// returns its result, which is handed to the proposer on this node, if
	// any. cmd is empty for the entry a new leader commits to start its
	// term; that call only tells the state machine of the new term.
	Apply(index, term uint64, cmd []byte) any
	// Snapshot returns the whole state, to be restored by Restore.
	Snapshot() ([]byte, error)
	// Restore replaces the whole state with a snapshot's.
	Restore(data []byte) error
}
