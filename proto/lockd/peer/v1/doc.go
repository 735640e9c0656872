// Package peerv1 is the generated Go code of lockd.peer.v1, the records
// lockd nodes write for each other (member records, snapshot envelopes). It
// is never served to clients.
package peerv1
