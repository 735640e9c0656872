package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// tagged is a result with the cluster it ran on, as run.sh writes them.
type tagged struct {
	result
	Cluster string `json:"cluster"`
}

// report reads result lines and writes a markdown table of medians, lockd
// beside etcd, with their ratios.
func report(in io.Reader, out io.Writer) error {
	type key struct {
		cluster, workload string
		c                 int
	}
	runs := map[key]map[string][]result{}
	var keys []key
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var r tagged
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return fmt.Errorf("bad result line %q: %w", line, err)
		}
		k := key{r.Cluster, r.Workload, r.Concurrency}
		if runs[k] == nil {
			runs[k] = map[string][]result{}
			keys = append(keys, k)
		}
		runs[k][r.System] = append(runs[k][r.System], r.result)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	sort.SliceStable(keys, func(i, j int) bool { return keys[i].cluster < keys[j].cluster })
	fmt.Fprintln(out, "| cluster | workload | C | metric | lockd | etcd Mutex | etcd v3lock | lockd/Mutex | lockd/v3lock |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|---|")
	for _, k := range keys {
		sys := runs[k]
		row := func(metric string, get func(result) float64, unit string) {
			l, e, v := median(sys["lockd"], get), median(sys["etcd"], get), median(sys["etcd-v3lock"], get)
			fmt.Fprintf(out, "| %s | %s | %d | %s | %s | %s | %s | %s | %s |\n", k.cluster, k.workload, k.c, metric,
				num(l, unit), num(e, unit), num(v, unit), ratio(l, e), ratio(l, v))
		}
		// total sums a count over all runs: an error in any run shows.
		total := func(metric string, get func(result) float64) {
			count := func(rs []result) string {
				if len(rs) == 0 {
					return "–"
				}
				var t float64
				for _, r := range rs {
					t += get(r)
				}
				return fmt.Sprintf("%.0f", t)
			}
			fmt.Fprintf(out, "| %s | %s | %d | %s | %s | %s | %s | | |\n", k.cluster, k.workload, k.c, metric,
				count(sys["lockd"]), count(sys["etcd"]), count(sys["etcd-v3lock"]))
		}
		switch {
		case k.workload == "sessions":
			row("sessions alive", func(r result) float64 { return float64(r.SessionsAlive) }, "")
			row("create p99", func(r result) float64 { return float64(r.P99us) / 1000 }, "ms")
		case k.workload == "gap":
			row("gap after leader SIGKILL", func(r result) float64 { return float64(r.GapMs) }, "ms")
		case strings.HasPrefix(k.workload, "failover"):
			row("no leader after its SIGKILL, median", func(r result) float64 { return float64(r.P50us) / 1000 }, "ms")
			row("worst", func(r result) float64 { return float64(r.P99us) / 1000 }, "ms")
		case k.workload == "hold":
			row("locks held", func(r result) float64 { return float64(r.Ops) }, "")
			row("largest RSS of a node", func(r result) float64 { return float64(r.RSSMB) }, "MiB")
			row("follower restart until caught up", func(r result) float64 { return float64(r.RestartMs) }, "ms")
			row("time to take them", func(r result) float64 { return r.Seconds * 1000 }, "ms")
		case k.workload == "floor":
			row("server call p50", func(r result) float64 { return float64(r.RPCus) / 1000 }, "ms")
			row("fdatasync p50", func(r result) float64 { return float64(r.FsyncUs) / 1000 }, "ms")
			row("loopback round trip p50", func(r result) float64 { return float64(r.RTTus) / 1000 }, "ms")
			row("floor (sum)", func(r result) float64 { return float64(r.P50us) / 1000 }, "ms")
			// The C=1 acquire against that floor, each system against its own.
			acq := runs[key{k.cluster, "uncontended", 1}]
			per := func(floor func(result) float64) func(string) float64 {
				return func(system string) float64 {
					a, f := median(acq[system], func(r result) float64 { return float64(r.P50us) }), median(sys[system], floor)
					if a < 0 || f <= 0 {
						return -1
					}
					return a / f
				}
			}
			perRow := func(metric string, per func(string) float64) {
				fmt.Fprintf(out, "| %s | %s | %d | %s | %s | %s | %s | %s | %s |\n", k.cluster, k.workload, k.c, metric,
					times(per("lockd")), times(per("etcd")), times(per("etcd-v3lock")), "", "")
			}
			perRow("C=1 acquire p50 ÷ floor", per(func(r result) float64 { return float64(r.P50us) }))
			// The same with the fsync the members of this machine pay
			// together, all on one disk.
			shared := func(r result) float64 {
				if r.QuorumFsyncUs == 0 {
					return -1
				}
				return float64(r.RPCus + r.QuorumFsyncUs + r.RTTus)
			}
			row("fdatasync p50, one per member at once, until a quorum is done", func(r result) float64 {
				if r.QuorumFsyncUs == 0 {
					return -1
				}
				return float64(r.QuorumFsyncUs) / 1000
			}, "ms")
			row("shared-disk floor (sum with it)", func(r result) float64 { return shared(r) / 1000 }, "ms")
			perRow("C=1 acquire p50 ÷ shared-disk floor", per(shared))
		default:
			label := "ops/s"
			if k.workload == "contended" {
				label = "handoffs/s"
			}
			row(label, func(r result) float64 { return r.OpsPerSec }, "")
			row("p50", func(r result) float64 { return float64(r.P50us) / 1000 }, "ms")
			row("p99", func(r result) float64 { return float64(r.P99us) / 1000 }, "ms")
			if k.workload == "contended" {
				row("out of order", func(r result) float64 { return float64(r.OutOfOrder) }, "")
			}
			total("errors, all runs", func(r result) float64 { return float64(r.Errors) })
		}
	}
	return nil
}

func ratio(a, b float64) string {
	if a < 0 || b <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func times(v float64) string {
	if v < 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", v)
}

func median(rs []result, get func(result) float64) float64 {
	if len(rs) == 0 {
		return -1
	}
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = get(r)
	}
	sort.Float64s(v)
	return v[len(v)/2]
}

func num(v float64, unit string) string {
	switch {
	case v < 0:
		return "–"
	case unit == "ms":
		return fmt.Sprintf("%.2f ms", v)
	case unit == "MiB":
		return fmt.Sprintf("%.0f MiB", v)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func reportMain(path string) {
	f, err := os.Open(path)
	if err != nil {
		fail(err)
	}
	defer f.Close()
	if err := report(f, os.Stdout); err != nil {
		fail(err)
	}
}
