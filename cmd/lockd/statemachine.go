package main

import (
	"encoding/binary"
	"errors"
	"sync/atomic"
)

// commandLog is the state machine the node replicates until the lock table
// is wired in: it counts the commands applied, which is enough for the
// replicated core to be run, observed and tested end to end.
type commandLog struct {
	commands atomic.Uint64
}

func newStateMachine() *commandLog { return &commandLog{} }

func (c *commandLog) Apply(index uint64, cmd []byte) any {
	return c.commands.Add(1)
}

func (c *commandLog) Snapshot() ([]byte, error) {
	return binary.AppendUvarint(nil, c.commands.Load()), nil
}

func (c *commandLog) Restore(data []byte) error {
	v, n := binary.Uvarint(data)
	if n <= 0 {
		return errors.New("commandLog: bad snapshot")
	}
	c.commands.Store(v)
	return nil
}
