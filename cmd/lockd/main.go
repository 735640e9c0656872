// Command lockd is the lockd server and its command-line client.
//
//	lockd serve [flags]                      run a node
//	lockd lock NAME [flags] -- CMD [ARGS…]    run CMD while holding lock NAME
//	lockd elect NAME --value V -- CMD…       run CMD while leading election NAME
//	lockd elect NAME --observe               print every change of leader
//	lockd status                             show the cluster
//	lockd locks list [PREFIX] | describe NAME
//	lockd lease list | revoke ID
//	lockd snapshot save FILE | restore FILE --name N --data-dir DIR --initial-cluster …
//	lockd member add NAME --peer-url URL [--learner] | promote NAME | remove NAME | list
//
// With no flags, `lockd serve` runs a single-node cluster with its data in
// ./lockd-data, serving clients and peers on 127.0.0.1:7070. Client commands
// take --endpoints (host:port,…; env LOCKD_ENDPOINTS), --ttl and --output
// json, before or after their arguments.
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
  lockd serve [flags]                       run a lockd node
  lockd lock NAME [flags] -- CMD [ARGS...]  run CMD while holding lock NAME
  lockd elect NAME --value V -- CMD ...     run CMD while leading election NAME
  lockd elect NAME --observe                print every change of leader
  lockd status                              show the cluster
  lockd locks list [PREFIX]                 list locks
  lockd locks describe NAME                 show a lock's holders and queue
  lockd lease list                          list leases
  lockd lease revoke ID                     end a lease, releasing its locks
  lockd member add NAME --peer-url URL [--learner]
                                            add a member (then start it with serve --join)
  lockd member promote NAME | remove NAME | list
                                            make a learner vote, remove a member, list them
  lockd member transfer [NAME]              hand raft leadership to NAME (or any voter)
  lockd snapshot save FILE                  back the lock table up to FILE
  lockd snapshot restore FILE --name N --data-dir DIR --initial-cluster N=URL,...
                                            seed a member of a new cluster from FILE
  lockd token new NAME --prefixes P,... [--role client|admin]
                                            make a token and its line for serve --token-file

Client commands take --endpoints host:port,... (env LOCKD_ENDPOINTS),
--ttl DURATION and --output json. 'lockd COMMAND -h' lists a command's flags.
Exit status: a command's own for lock and elect; 75 when a lock was not
acquired (--skip-if-held, --wait); 2 for a usage error; 1 for other errors.
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
	case "lock":
		err = lockCmd(args[1:], stdout, stderr)
	case "elect":
		err = electCmd(args[1:], stdout, stderr)
	case "status":
		err = statusCmd(args[1:], stdout, stderr)
	case "locks":
		err = locksCmd(args[1:], stdout, stderr)
	case "lease":
		err = leaseCmd(args[1:], stdout, stderr)
	case "snapshot":
		err = snapshotCmd(args[1:], stdout, stderr)
	case "member":
		err = memberCmd(args[1:], stdout, stderr)
	case "token":
		err = tokenCmd(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "lockd: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	var ec exitCodeError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ec):
		if ec.err != nil {
			fmt.Fprintf(stderr, "lockd %s: %v\n", args[0], ec.err)
		}
		return ec.code
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "lockd %s: %v\n", args[0], err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "lockd %s: %v\n", args[0], err)
		return 1
	}
}

// usageError is a mistake in the command line.
type usageError struct{ error }
