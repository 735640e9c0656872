package node

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkCommit measures proposals committed and applied through a 3-node
// in-process cluster on real pebble with fsync on every Ready, at 1, 16 and
// 128 concurrent proposers. Each op is one proposal submitted to the leader;
// p50 and p99 are the latency of one Propose call.
func BenchmarkCommit(b *testing.B) {
	for _, conc := range []int{1, 16, 128} {
		b.Run(fmt.Sprintf("proposers=%d", conc), func(b *testing.B) {
			c := newTestCluster(b, 3, nil, func(cfg *Config) {
				cfg.HeartbeatInterval = 100 * time.Millisecond
				cfg.ElectionTimeout = time.Second
			})
			l := c.waitLeader(10 * time.Second).current()
			var next atomic.Uint64
			lat := make([][]time.Duration, conc)
			b.ResetTimer()
			var wg sync.WaitGroup
			for w := range conc {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						op := next.Add(1)
						if op > uint64(b.N) {
							return
						}
						start := time.Now()
						if err := propose(context.Background(), l, op); err != nil {
							b.Error(err)
							return
						}
						lat[w] = append(lat[w], time.Since(start))
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			all := slices.Concat(lat...)
			slices.Sort(all)
			if len(all) > 0 {
				b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
		})
	}
}
