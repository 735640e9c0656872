// Command leader shows a batch job that elects a leader: three instances of
// a nightly job campaign for "nightly-report"; only the leader runs the job,
// then hands leadership to the next, while an observer prints every change.
// Run `lockd serve`, then `go run ./examples/leader`.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"strings"
	"sync"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
)

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:7070", "lockd nodes, host:port,…")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := lockd.New(strings.Split(*endpoints, ","))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	octx, stopObserving := context.WithCancel(ctx)
	observed := c.Observe(octx, "nightly-report")
	var watch sync.WaitGroup
	watch.Add(1)
	go func() {
		defer watch.Done()
		for o := range observed {
			if o.Leader == nil {
				fmt.Printf("[observer] revision %d: no leader\n", o.Revision)
			} else {
				fmt.Printf("[observer] revision %d: %s leads in term %d\n", o.Revision, o.Leader.Value, o.Leader.Term)
			}
		}
	}()

	var wg sync.WaitGroup
	for i := 1; i <= 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("job-%d", i)
			s, err := c.NewSession(ctx, lockd.WithTTL(5*time.Second), lockd.WithOwner(name))
			if err != nil {
				log.Fatal(err)
			}
			defer s.Close(context.WithoutCancel(ctx))
			e := lockd.NewElection(s, "nightly-report")
			if err := e.Campaign(ctx, []byte(name)); err != nil {
				log.Fatal(err)
			}
			fmt.Printf("%s: leader in term %d, running the report\n", name, e.Term())
			select {
			case <-time.After(300 * time.Millisecond): // the work
			case <-e.Context().Done():
				log.Printf("%s: lost leadership mid-run: %v", name, context.Cause(e.Context()))
				return
			}
			fmt.Printf("%s: done, resigning\n", name)
			if err := e.Resign(ctx); err != nil {
				log.Fatal(err)
			}
		}()
	}
	wg.Wait()
	time.Sleep(200 * time.Millisecond) // let the observer print the last change
	stopObserving()
	watch.Wait()
}
