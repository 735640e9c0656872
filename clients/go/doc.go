// Package lockd is the Go client of lockd, a distributed lock and
// leader-election service.
//
// A Client talks to a cluster through any of its nodes and fails over
// between them. A Session is a lease kept alive in the background; every
// lock and election belongs to one. The session keeps a conservative local
// deadline (the send time of the last acknowledged keep-alive plus the TTL,
// less a margin): once it passes without a renewal, Done is closed and every
// grant of the session must be treated as lost, before the server could
// give the lock to anybody else.
//
// Mutex, RWMutex, Semaphore and MultiLock acquire locks in the server's fair
// FIFO queues; each grant carries a fencing token that strictly increases
// per lock. Pass it to the resource the lock protects, and have the
// resource refuse older tokens (package fence does that for Go servers).
//
// Election campaigns for leadership of a named election; the term it
// returns is a fencing token too.
//
// Calls that change state carry a request id, so a retry after a lost reply
// (on the same node or another) is answered with the first result: a Lock
// whose reply was lost does not queue twice.
package lockd
