#!/usr/bin/env bash
# Runs lockd and etcd side by side on this machine, with the same workloads,
# durability (fsync on) and timeouts (heartbeat 100ms, election 1s), and
# writes RESULTS.md: medians of RUNS runs and lockd/etcd ratios.
#
#   benchmarks/run.sh                 # 3 runs of 10s each workload
#   RUNS=1 DUR=3s ROUNDS=1 benchmarks/run.sh   # a quick look
#   SCALE_ONLY=1 RUNS=1 OUT=/tmp/scale.md benchmarks/run.sh   # only the 1M-lock run
#
# It installs Debian's etcd-server if etcd is missing, starts every process
# it needs on loopback ports, and stops exactly those (by pid) when done.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-3}
DUR=${DUR:-10s}
SESSIONS=${SESSIONS:-100000}
SESSIONS_DUR=${SESSIONS_DUR:-20s} # twice the TTL: the sessions must be kept alive
ROUNDS=${ROUNDS:-3} # SIGKILLs of the leading process per failover run
HOLD=${HOLD:-1000000} # locks held for the scale run (0: skip it)
SCALE_MEMORY_LIMIT=${SCALE_MEMORY_LIMIT:-900MiB} # lockd serve --memory-limit in the scale run
OUT=${OUT:-RESULTS.md}
# The version measured, taken before anything is written (the results file
# is in the tree, and would mark it dirty).
version=$(cd .. && git describe --always --dirty 2>/dev/null || echo unknown)

if ! command -v etcd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

(cd .. && go build -o "$work/lockd" ./cmd/lockd)
go build -o "$work/lockbench" ./lockbench
results="$work/results.jsonl"

declare -A pid_of # endpoint -> pid

# start_etcd and start_lockd start a cluster of the given size and set eps
# to its endpoints (they run in this shell, so their pids are kept).
start_etcd() { # size
  local n=$1 cluster="" i
  for i in $(seq 1 "$n"); do cluster+="e$i=http://127.0.0.1:$((23800 + i)),"; done
  cluster=${cluster%,}
  for i in $(seq 1 "$n"); do
    etcd --name "e$i" --data-dir "$work/etcd-$n-$i" \
      --listen-client-urls "http://127.0.0.1:$((23700 + i))" --advertise-client-urls "http://127.0.0.1:$((23700 + i))" \
      --listen-peer-urls "http://127.0.0.1:$((23800 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((23800 + i))" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --heartbeat-interval 100 --election-timeout 1000 --log-level error >"$work/etcd-$n-$i.log" 2>&1 &
    pids+=($!); pid_of["127.0.0.1:$((23700 + i))"]=$!
  done
  eps=""; for i in $(seq 1 "$n"); do eps+="127.0.0.1:$((23700 + i)),"; done
  eps=${eps%,}
}

start_lockd() { # size
  local n=$1 i
  for i in $(seq 1 "$n"); do start_lockd_member "$n" "$i"; done
  eps=""; for i in $(seq 1 "$n"); do eps+="127.0.0.1:$((27070 + i)),"; done
  eps=${eps%,}
}

start_lockd_member() { # size index
  local n=$1 i=$2 cluster="" j
  for j in $(seq 1 "$n"); do cluster+="n$j=http://127.0.0.1:$((27070 + j)),"; done
  cluster=${cluster%,}
  "$work/lockd" serve --name "n$i" --data-dir "$work/lockd-$n-$i" --listen "127.0.0.1:$((27070 + i))" \
    --initial-cluster "$cluster" --heartbeat-interval 100ms --election-timeout 1s --log-level warn --log-format json \
    ${LOCKD_FLAGS:-} >>"$work/lockd-$n-$i.log" 2>&1 &
  pids+=($!); pid_of["127.0.0.1:$((27070 + i))"]=$!
}

max_rss_mb() { # the largest RSS among the running servers, in MiB
  local p r max=0
  for p in "${pids[@]}"; do
    r=$(ps -o rss= -p "$p" 2>/dev/null || echo 0)
    [ "${r:-0}" -gt "$max" ] && max=$r
  done
  echo $((max / 1024))
}

stop_all() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  # Every run starts from empty data dirs.
  rm -rf "$work"/etcd-*/ "$work"/lockd-*/
}

wait_leader() { # system endpoints
  for _ in $(seq 1 100); do
    if "$work/lockbench" -system "${1%%-*}" -endpoints "$2" -workload leader >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "no leader for $1" >&2; return 1
}

bench() { # cluster system endpoints workload c [duration]
  "$work/lockbench" -system "$2" -endpoints "$3" -workload "$4" -c "$5" -duration "${6:-$DUR}" \
    | sed "s/^{/{\"cluster\":\"$1\",/" >>"$results"
}

# floor: the cheapest server call, an fdatasync in a server's data dir, and
# a loopback round trip, measured in the same run.
floor() { # cluster system endpoints datadir
  "$work/lockbench" -system "$2" -endpoints "$3" -workload floor -dir "$4" \
    | sed "s/^{/{\"cluster\":\"$1\",/" >>"$results"
}

failover() { # cluster system endpoints ttl
  "$work/lockbench" -system "$2" -endpoints "$3" -workload failover -ttl "$4" -rounds "$ROUNDS" \
    | sed "s/^{/{\"cluster\":\"$1\",/" >>"$results"
}

declare -A size_of=([3-node]=3 [1-node]=1)
clusters="3-node 1-node"
[ "${SCALE_ONLY:-0}" = 1 ] && clusters=""
for cluster in $clusters; do
  n=${size_of[$cluster]}
  # Runs alternate between the systems, so that a machine that slows down
  # for a while (shared hosts do) costs each system alike.
  for run in $(seq 1 "$RUNS"); do
    for system in lockd etcd etcd-v3lock; do
      [ "$system" = etcd-v3lock ] && [ "$cluster" = 1-node ] && continue
      if [ "$system" = lockd ]; then start_lockd "$n"; else start_etcd "$n"; fi
      data_dir="$work/${system%%-*}-$n-1"
      wait_leader "$system" "$eps"
      echo "== $cluster $system run $run" >&2
      if [ "$system" = etcd-v3lock ]; then
        # etcd's Lock service: the lock workloads only (no try-lock; its
        # sessions and elections are etcd's).
        bench "$cluster" "$system" "$eps" uncontended 1
        bench "$cluster" "$system" "$eps" uncontended 16
        bench "$cluster" "$system" "$eps" uncontended 64
        bench "$cluster" "$system" "$eps" contended 16
      elif [ "$cluster" = 3-node ]; then
        floor "$cluster" "$system" "$eps" "$data_dir"
        bench "$cluster" "$system" "$eps" uncontended 1
        bench "$cluster" "$system" "$eps" uncontended 16
        bench "$cluster" "$system" "$eps" uncontended 64
        bench "$cluster" "$system" "$eps" contended 16
        bench "$cluster" "$system" "$eps" trylock 16
        bench "$cluster" "$system" "$eps" sessions "$SESSIONS" "$SESSIONS_DUR"
        failover "$cluster" "$system" "$eps" 1s
        failover "$cluster" "$system" "$eps" 5s
        # The gap after SIGKILL of the raft leader, 3s into 10s of
        # uncontended load.
        bench "$cluster" "$system" "$eps" gap 16 10s &
        bpid=$!
        sleep 3
        leader=$("$work/lockbench" -system "${system%%-*}" -endpoints "$eps" -workload leader)
        kill -9 "${pid_of[$leader]}"
        wait "$bpid"
      else
        floor "$cluster" "$system" "$eps" "$data_dir"
        bench "$cluster" "$system" "$eps" uncontended 1
        bench "$cluster" "$system" "$eps" uncontended 16
      fi
      stop_all
    done
  done
done

# Scale (lockd only): HOLD locks held on a 3-node cluster, the nodes' RSS
# under them, and a follower's restart after SIGKILL: from its start until
# it has applied everything the leader had.
if [ "$HOLD" -gt 0 ]; then
  for run in $(seq 1 "$RUNS"); do
    echo "== scale run $run: $HOLD held locks" >&2
    # A soft heap limit, as an operator sizing a node would set: without
    # one, Go lets the heap grow to twice what is live between collections.
    LOCKD_FLAGS="--memory-limit $SCALE_MEMORY_LIMIT"
    start_lockd 3
    wait_leader lockd "$eps"
    "$work/lockbench" -system lockd -endpoints "$eps" -workload hold -c "$HOLD" -ttl 60s -duration 10m >"$work/hold.out" &
    hpid=$!
    until [ -s "$work/hold.out" ] || ! kill -0 "$hpid" 2>/dev/null; do sleep 1; done
    rss=$(max_rss_mb)
    leader=$("$work/lockbench" -system lockd -endpoints "$eps" -workload leader)
    follower=""
    for ep in ${eps//,/ }; do [ "$ep" != "$leader" ] && follower=$ep; done
    kill -9 "${pid_of[$follower]}"
    sleep 1
    t0=$(date +%s%N)
    start_lockd_member 3 "${follower##*:2707}"
    "$work/lockbench" -workload caughtup -endpoints "$follower" -leader "$leader" -duration 2m >/dev/null
    restart_ms=$((($(date +%s%N) - t0) / 1000000))
    rss_after=$(max_rss_mb)
    kill "$hpid" 2>/dev/null || true
    wait "$hpid" 2>/dev/null || true
    LOCKD_FLAGS=""
    sed "s/^{/{\"cluster\":\"3-node\",\"rss_mb\":$((rss > rss_after ? rss : rss_after)),\"restart_ms\":$restart_ms,/" "$work/hold.out" >>"$results"
    stop_all
  done
fi

{
  echo "# lockd beside etcd"
  echo
  echo "Generated by \`benchmarks/run.sh\` (RUNS=$RUNS, DUR=$DUR, SESSIONS=$SESSIONS, ROUNDS=$ROUNDS, HOLD=$HOLD) on $(date -u +%Y-%m-%d)."
  echo
  echo "- Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(uname -sr); lockd and etcd run on the same cores as the load generator."
  echo "- lockd: $version, Go SDK; heartbeat 100ms, election timeout 1s, fsync on."
  echo "- etcd: $(etcd --version | head -1 | awk '{print $3}') (Debian etcd-server); heartbeat 100ms, election timeout 1s, fsync on. Driven two ways: \"etcd Mutex\" is go.etcd.io/etcd/client/v3/concurrency (Mutex, Election), \"etcd v3lock\" is etcd's Lock service (v3lockpb, one RPC to lock and one to unlock)."
  echo "- Workloads (lockbench): uncontended = C workers each locking and unlocking a lock of its own; contended = C workers on one lock (handoffs/s); trylock = C workers trying a held lock; sessions = $SESSIONS sessions of TTL 10s created by one client process (64 at a time) and kept alive for $SESSIONS_DUR, counted alive at the end; gap = longest time without a successful acquire when the raft leader is SIGKILLed 3s into 10s of uncontended load, 16 workers; failover = two processes campaign with session TTL 1s or 5s, the leader is SIGKILLed, time until the standby leads (median of $ROUNDS); floor = p50 of the cheapest server call (lockd Status; etcd serializable Get), of a 128-byte append + fdatasync in a member's data dir, and of a loopback TCP round trip between processes, and the C=1 acquire p50 divided by their sum; the shared-disk floor replaces the fdatasync with the p50 time until a quorum of as many appenders as members, fdatasyncing at once in that dir, is done (what the members of one cluster on this one disk pay together); hold (lockd only) = $HOLD locks held by $((HOLD / 10000)) sessions, taken 64 at a time by 16 workers, the largest RSS of the three nodes under them (nodes run with --memory-limit $SCALE_MEMORY_LIMIT), and a follower's restart after SIGKILL until it has applied all the leader had."
  echo "- Ratios are lockd ÷ etcd: above 1 is better for throughput, below 1 is better for latencies and gaps."
  echo "- Medians of $RUNS runs; p50/p99 are of the acquire (or try, or session creation)."
  echo
  "$work/lockbench" -workload report "$results"
} >"$OUT"
# The raw results, one JSON line per run, beside the table (for errors,
# spreads and anything the table leaves out).
cp "$results" "${OUT%.md}.jsonl"
cat "$OUT"
