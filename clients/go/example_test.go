package lockd_test

import (
	"context"
	"fmt"
	"log"
	"time"

	lockd "github.com/lockd-io/lockd/clients/go"
)

// Hold a mutex for a critical section, and stop the work if the grant is
// lost. The token goes to the resource so it can refuse stale holders.
func ExampleMutex() {
	ctx := context.Background()
	c, err := lockd.New([]string{"127.0.0.1:7070"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	s, err := c.NewSession(ctx, lockd.WithTTL(10*time.Second), lockd.WithOwner("report-builder"))
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close(ctx)

	m := lockd.NewMutex(s, "reports/daily")
	if err := m.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	// Work under m.Context(): it is cancelled if the lock is lost.
	work := func(ctx context.Context, token uint64) error {
		fmt.Println("writing the report with fencing token", token)
		return ctx.Err()
	}
	if err := work(m.Context(), m.Token()); err != nil {
		log.Print("lost the lock: ", context.Cause(m.Context()))
	}
	if err := m.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
}

// Only one instance of a batch job runs at a time; the others skip.
func ExampleMutex_TryLock() {
	ctx := context.Background()
	c, _ := lockd.New([]string{"127.0.0.1:7070"})
	s, err := c.NewSession(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close(ctx)
	m := lockd.NewMutex(s, "jobs/cleanup")
	ok, err := m.TryLock(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if !ok {
		fmt.Println("another instance is running; skipping")
		return
	}
	defer m.Unlock(ctx)
	fmt.Println("cleaning up")
}

// Campaign for leadership, act as leader while it lasts, and watch who
// leads.
func ExampleElection() {
	ctx := context.Background()
	c, _ := lockd.New([]string{"127.0.0.1:7070", "127.0.0.1:7071", "127.0.0.1:7072"})
	s, err := c.NewSession(ctx, lockd.WithTTL(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close(ctx)

	e := lockd.NewElection(s, "scheduler")
	if err := e.Campaign(ctx, []byte("10.0.0.7:8080")); err != nil {
		log.Fatal(err)
	}
	fmt.Println("leading in term", e.Term())
	select {
	case <-e.Context().Done():
		fmt.Println("lost leadership:", context.Cause(e.Context()))
	case <-time.After(time.Minute):
		e.Resign(ctx) // hand over at once
	}
}

// Follow an election from anywhere: the first value is the current state.
func ExampleClient_Observe() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, _ := lockd.New([]string{"127.0.0.1:7070"})
	for o := range c.Observe(ctx, "scheduler") {
		if o.Leader == nil {
			fmt.Println("no leader")
			continue
		}
		fmt.Printf("leader %s in term %d\n", o.Leader.Value, o.Leader.Term)
	}
}
