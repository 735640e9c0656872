// Command lockd is the lockd server and its command-line client.
//
//	lockd serve [flags]     run a node (see `lockd serve -h`)
//
// With no flags, `lockd serve` runs a single-node cluster with its data in
// ./lockd-data, serving clients and peers on 127.0.0.1:7070.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

const usage = `lockd is a distributed lock and leader-election service.

Usage:
  lockd serve [flags]    run a lockd node (lockd serve -h lists the flags)
  lockd help             show this help
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one lockd command and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(args[1:], stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "lockd: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "lockd %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "lockd %s: %v\n", args[0], err)
		return 1
	}
}

// usageError is a mistake in the command line.
type usageError struct{ error }
