//go:build race

package store

// raceEnabled scales the randomized tests down under -race, where pebble
// also turns on its costly invariant checks.
const raceEnabled = true
