package server

import (
	"strings"
	"sync"

	"github.com/lockd-io/lockd/election"
	"github.com/lockd-io/lockd/locks"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
)

// leaderLog records each election's leader as it changes, with the revision
// of the change, so that Observe replays the leaders as they were at each
// event rather than the table as it is when the event is sent, and resumes
// from a revision without repeating what the client saw. It is fed on the
// applying goroutine after each command, before the hub, so a stream that
// receives an event finds its leader here.
//
// The log is complete from revision since: every election in the table
// then was entered with its leader, and every change after. An election
// that is gone keeps its last entry (no leader) until the hub's history no
// longer reaches back to it; a resume from before that is not replayed
// but starts from the current state.
type leaderLog struct {
	mu     sync.Mutex
	since  uint64
	byName map[string]*electionLog // by election lock name
	gone   []tombstone             // elections that left the table, oldest first
}

type electionLog struct {
	changes []leaderAt // oldest first
	trimmed bool       // older changes were dropped
}

type leaderAt struct {
	rev    uint64
	leader *lockdv1.LeaderInfo // nil: no leader
}

type tombstone struct {
	name string
	rev  uint64
}

// leaderLogDepth bounds the changes kept per election.
const leaderLogDepth = 256

var electionPrefix = election.Namespace + "/"

func newLeaderLog(table *locks.Table) *leaderLog {
	l := &leaderLog{}
	l.reset(table)
	return l
}

// reset starts the log afresh from the table's elections as they are.
func (l *leaderLog) reset(table *locks.Table) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.byName, l.gone = map[string]*electionLog{}, nil
	l.since = table.Revision()
	for after := ""; ; {
		page, rev, more := table.List(electionPrefix, after, 1000)
		l.since = min(l.since, rev)
		for _, info := range page {
			l.byName[info.Name] = &electionLog{changes: []leaderAt{{rev: rev, leader: leaderInfo(info.Holders)}}}
		}
		if !more {
			return
		}
		after = page[len(page)-1].Name
	}
}

// observe takes the events of one applied command. The leader of each
// election it touched is read once, after the command, and dated by the
// command's last revision on that election: a command may queue and grant
// (two revisions), or release and hand over, and only its outcome is a
// leader anybody could read. oldest is the oldest revision the hub still
// holds.
func (l *leaderLog) observe(events []locks.Event, table *locks.Table, oldest uint64) {
	var touched map[string]uint64 // election lock → last revision
	for _, e := range events {
		if e.Type == locks.Reset {
			// The table jumped to a snapshot.
			l.reset(table)
			return
		}
		if strings.HasPrefix(e.Name, electionPrefix) {
			if touched == nil {
				touched = map[string]uint64{}
			}
			touched[e.Name] = max(touched[e.Name], e.Revision)
		}
	}
	if touched == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, rev := range touched {
		leader := leaderInfo(table.Holders(name))
		log := l.byName[name]
		if log == nil {
			log = &electionLog{}
			l.byName[name] = log
		}
		if n := len(log.changes); n > 0 && sameLeader(log.changes[n-1].leader, leader) {
			continue
		}
		if len(log.changes) == leaderLogDepth {
			log.changes, log.trimmed = append(log.changes[:0], log.changes[1:]...), true
		}
		log.changes = append(log.changes, leaderAt{rev: rev, leader: leader})
		if leader == nil && !table.Exists(name) {
			l.gone = append(l.gone, tombstone{name, rev})
		}
	}
	// Forget elections that left the table before the hub's history (done
	// here, on the next command that touches an election).
	for len(l.gone) > 0 && l.gone[0].rev < oldest {
		t := l.gone[0]
		l.gone = l.gone[1:]
		if log := l.byName[t.name]; log != nil && log.changes[len(log.changes)-1].rev == t.rev {
			delete(l.byName, t.name)
		}
	}
}

// at returns the leader of the election lock name as of revision rev, and
// whether the log reaches back that far.
func (l *leaderLog) at(name string, rev uint64) (*lockdv1.LeaderInfo, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if rev < l.since {
		return nil, false
	}
	log := l.byName[name]
	if log == nil {
		return nil, true // not in the table since before rev
	}
	for i := len(log.changes) - 1; i >= 0; i-- {
		if log.changes[i].rev <= rev {
			return log.changes[i].leader, true
		}
	}
	// Before its first change: the election did not exist yet, unless the
	// log lost its beginning.
	return nil, !log.trimmed
}

func leaderInfo(holders []locks.HolderInfo) *lockdv1.LeaderInfo {
	l, ok := election.LeaderOf(locks.LockInfo{Holders: holders})
	if !ok {
		return nil
	}
	return &lockdv1.LeaderInfo{Value: l.Value, Term: l.Term, LeaseId: l.LeaseID, Owner: l.Owner}
}
