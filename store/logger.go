package store

import (
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/rs/zerolog"
)

// pebbleLogger adapts zerolog to pebble.Logger.
type pebbleLogger struct {
	l zerolog.Logger
}

var _ pebble.Logger = pebbleLogger{}

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Info().Msgf(format, args...)
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error().Msgf(format, args...)
}

// Fatalf logs at fatal level and panics: pebble calls it on broken internal
// invariants and does not expect it to return. A panic (rather than the
// os.Exit of zerolog's Fatal) leaves the decision and a stack trace to the
// process.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.WithLevel(zerolog.FatalLevel).Msg(msg)
	panic("store: pebble: " + msg)
}

// eventListener logs the pebble events an operator should see: errors, slow
// disks, write stalls and low disk space. Flushes and compactions are routine
// and go to debug.
func eventListener(l zerolog.Logger) *pebble.EventListener {
	return &pebble.EventListener{
		BackgroundError: func(err error) {
			l.Error().Err(err).Msg("pebble background error")
		},
		DataCorruption: func(info pebble.DataCorruptionInfo) {
			l.Error().Stringer("info", info).Msg("pebble data corruption")
		},
		DiskSlow: func(info pebble.DiskSlowInfo) {
			l.Warn().Stringer("info", info).Msg("pebble disk slow")
		},
		WriteStallBegin: func(info pebble.WriteStallBeginInfo) {
			l.Warn().Str("reason", info.Reason).Msg("pebble write stall begin")
		},
		WriteStallEnd: func() {
			l.Info().Msg("pebble write stall end")
		},
		LowDiskSpace: func(info pebble.LowDiskSpaceInfo) {
			l.Warn().Stringer("info", info).Msg("pebble low disk space")
		},
		FlushEnd: func(info pebble.FlushInfo) {
			l.Debug().Stringer("info", info).Msg("pebble flush")
		},
		CompactionEnd: func(info pebble.CompactionInfo) {
			l.Debug().Stringer("info", info).Msg("pebble compaction")
		},
	}
}
