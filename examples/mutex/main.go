// Command mutex shows a microservice mutex: three replicas of an inventory
// service decrement the stock of one item, each under the lock
// "inventory/sku-42", and the store they write to refuses stale fencing
// tokens. Run `lockd serve`, then `go run ./examples/mutex`.
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
	"github.com/lockd-io/lockd/clients/go/fence"
)

// store is the resource the lock protects. It checks every write's token.
type store struct {
	guard *fence.Guard
	mu    sync.Mutex
	stock int
}

func (s *store) read() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stock
}

func (s *store) write(token uint64, stock int) error {
	if err := s.guard.Admit("inventory/sku-42", token); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stock = stock
	return nil
}

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

	db := &store{guard: fence.NewGuard(), stock: 30}
	var wg sync.WaitGroup
	for replica := 1; replica <= 3; replica++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := c.NewSession(ctx, lockd.WithTTL(5*time.Second), lockd.WithOwner(fmt.Sprintf("inventory-%d", replica)))
			if err != nil {
				log.Fatal(err)
			}
			defer s.Close(context.WithoutCancel(ctx))
			m := lockd.NewMutex(s, "inventory/sku-42")
			for range 10 {
				if err := m.Lock(ctx); err != nil {
					log.Fatal(err)
				}
				// Read-modify-write, safe under the lock and fenced by its token.
				stock := db.read()
				if err := db.write(m.Token(), stock-1); err != nil {
					log.Printf("replica %d: write refused: %v", replica, err)
				}
				if err := m.Unlock(ctx); err != nil {
					log.Fatal(err)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("stock left: %d (30 less 3 replicas × 10 sales)\n", db.read())
	if db.read() != 0 {
		log.Fatal("lost updates: the lock did not protect the store")
	}
}
