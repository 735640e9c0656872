package node

import (
	"fmt"

	"github.com/rs/zerolog"
)

// raftLogger adapts zerolog to raft.Logger. raft logs a great deal at info
// level during normal elections; those lines are worth keeping, so they pass
// through unchanged.
type raftLogger struct{ l zerolog.Logger }

func (r raftLogger) Debug(v ...any)              { r.l.Debug().Msg(fmt.Sprint(v...)) }
func (r raftLogger) Debugf(f string, v ...any)   { r.l.Debug().Msgf(f, v...) }
func (r raftLogger) Info(v ...any)               { r.l.Info().Msg(fmt.Sprint(v...)) }
func (r raftLogger) Infof(f string, v ...any)    { r.l.Info().Msgf(f, v...) }
func (r raftLogger) Warning(v ...any)            { r.l.Warn().Msg(fmt.Sprint(v...)) }
func (r raftLogger) Warningf(f string, v ...any) { r.l.Warn().Msgf(f, v...) }
func (r raftLogger) Error(v ...any)              { r.l.Error().Msg(fmt.Sprint(v...)) }
func (r raftLogger) Errorf(f string, v ...any)   { r.l.Error().Msgf(f, v...) }
func (r raftLogger) Fatal(v ...any)              { r.l.Fatal().Msg(fmt.Sprint(v...)) }
func (r raftLogger) Fatalf(f string, v ...any)   { r.l.Fatal().Msgf(f, v...) }
func (r raftLogger) Panic(v ...any)              { s := fmt.Sprint(v...); r.l.Error().Msg(s); panic(s) }
func (r raftLogger) Panicf(f string, v ...any) {
	s := fmt.Sprintf(f, v...)
	r.l.Error().Msg(s)
	panic(s)
}
