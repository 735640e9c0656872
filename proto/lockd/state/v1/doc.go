// Package statev1 is the generated Go code of lockd.state.v1: the commands
// the lock table replicates through raft and its snapshot encoding. It is
// never served to clients.
package statev1
