package server

import (
	"github.com/lockd-io/lockd/locks"
	"github.com/rs/zerolog"
)

// audit writes one line per grant, release, lease end and force release,
// in the order they were applied. Every node applies the same log, so every
// node's audit log tells the same story; each line carries the revision
// that orders it.
func audit(log *zerolog.Logger, events []locks.Event) {
	for _, e := range events {
		var ev *zerolog.Event
		switch e.Type {
		case locks.Granted:
			ev = log.Info().Str("event", "grant").Str("lock", e.Name)
		case locks.Released:
			ev = log.Info().Str("event", "release").Str("lock", e.Name).Str("reason", e.Reason)
		case locks.ForceReleased:
			ev = log.Warn().Str("event", "force-release").Str("lock", e.Name).Str("reason", e.Reason)
		case locks.LeaseEnded:
			ev = log.Info().Str("event", "lease-end").Str("reason", e.Reason)
		default:
			continue
		}
		ev.Uint64("revision", e.Revision).Uint64("lease", e.LeaseID)
		if e.By != "" {
			ev.Str("by", e.By)
		}
		if e.Token != 0 {
			ev.Uint64("token", e.Token)
		}
		ev.Msg("audit")
	}
}
