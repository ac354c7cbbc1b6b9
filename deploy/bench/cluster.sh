#!/usr/bin/env bash
# The scale-out curve: `deploy/bench/compare.sh cluster` runs this. One
# node against clusters of NODES nodes, real `karuta serve` processes each
# on its own loopback address as if on its own host, every tracker pinned
# to core 0 and the load (`karuta bench`) to core 1, server CPU summed
# over each cluster's processes. Prints markdown tables.
#
#   NODES="1 3 4 6 9" deploy/bench/compare.sh cluster   # the curve (default)
#   NODES=6 ROUNDS=1 DURATION=5s deploy/bench/compare.sh cluster
#
# Shapes: one node without clustering (the reference, always run), then a
# cluster of each size in NODES with `replicas: REPLICAS` and the other
# defaults (clusters of at most 3 replicate fully), then each size in FULL0
# again with `full_replication: 0`, so even 3 nodes place swarms as a
# large cluster does. Shape k's node i listens on 127.0.k.i: UDP and HTTP
# on 16969, metrics on 16880, gossip on 17946, the data channel on 17947.
# Every cluster has its own secret key; all nodes of a run share one UDP
# connection-id key. The per-address limits (rate_limit.per_ip,
# max_peers_per_source) are off, as in compare.sh: every bench client
# comes from 127.0.0.1. Clients are spread evenly over a shape's nodes
# (`--url` per node).
#
# Each workload (ZIPF, a list of popularity exponents: 0 is uniform) gets
# fresh trackers. Once every node's /cluster shows all members alive, the
# ring settled and the node's copies whole, `karuta bench --prime` loads
# the whole population into each shape, so every measured run updates
# peers as a tracker in steady state does and the population is the
# reference for memory. Then ROUNDS rounds, each running every protocol
# against every shape in turn (one node first), so noise on the machine
# falls on all shapes alike; then ROUNDS rounds in open loop over UDP at
# RATE requests/s, the same offered load for every shape, for latency;
# then `karuta bench visibility` on every cluster of a size in VISIBILITY,
# for new peers in new swarms and in swarms the reading node already
# serves, with the cluster's nodes free to run on both cores (as on their
# own hosts; VIS_PINNED=1 keeps them on core 0 and the probe on core 1).
# Every run passes each node's metrics URL to the bench, which marks it
# INVALID if any node dropped, refused, failed or could not drain
# anything, or any request failed or timed out.
#
# Concurrency: CONCURRENCY clients (default 1024) in every run and shape,
# closed and open loop. A production tracker has thousands of clients in
# flight; a bench with 64 starves a node: its UDP reader finds a few
# datagrams per recvmmsg where a busy tracker fills its batch (batch_size
# 32), so each answer pays more system calls and the single node, the
# reference of every ratio, looks dearer than it is. 1024 keeps the single
# node's batches full (SYSCALLS=1 shows datagrams per recvmmsg) and gives
# each node of a 9-node cluster over a hundred clients; see
# docs/performance.md ("The scale-out curve").
#
# Environment: NODES ("1 3 4 6 9"), FULL0 ("3"; empty skips), REPLICAS (2),
# ONE_ENTRY (unset; 1 adds 3 nodes with replicas 1 and all the load on
# one, the shape of an older target), FULL and FORWARD_DELAY (unset keeps
# the defaults; set the clusters' full_replication and forward_delay),
# UDP_BATCH (unset keeps the default; sets every node's UDP batch_size,
# one node's included), UDP_READERS (1: every node's UDP readers, one
# node's included),
# ZIPF ("0 1.1"), SWARMS (100000), PEERS (1000000), PROTOS ("udp http"),
# ROUNDS (3), DURATION (10s), WARMUP (3s), CONCURRENCY (1024), TIMEOUT (5s:
# how long a request may wait; closed loop at 1024 clients queues requests
# for CONCURRENCY/throughput, tens of milliseconds), RATE (20000; 0 skips
# the open loop), VISIBILITY ("3 6"; empty skips), VIS_ROUNDS
# (3000), SYSCALLS (unset; 1 counts the trackers' recvmmsg calls with perf
# during each closed-loop UDP run: datagrams per call that returned some,
# and the share of calls that found the socket empty), PROFILE (unset; 1 saves a 6 s CPU
# profile of every node of every shape during the last closed-loop UDP
# round, as OUT/WORKLOAD-NAME.pprof), STRICT (unset; 1 exits 1 if any run
# was INVALID), OUT (a new temporary directory; keeps every run's JSON
# and the nodes' logs).
# Needs Linux, taskset, python3, two cores, and the 127.0.0.0/8 loopback
# block; run it under `flock /tmp/karuta-bench.lock` on shared machines.
set -euo pipefail

NODES=${NODES-1 3 4 6 9}
FULL0=${FULL0-3}
REPLICAS=${REPLICAS:-2}
ONE_ENTRY=${ONE_ENTRY:-}
FULL=${FULL:-}
FORWARD_DELAY=${FORWARD_DELAY:-}
UDP_BATCH=${UDP_BATCH:-}
UDP_READERS=${UDP_READERS:-1}
ZIPF=${ZIPF:-0 1.1}
SWARMS=${SWARMS:-100000}
PEERS=${PEERS:-1000000}
PROTOS=${PROTOS:-udp http}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONCURRENCY=${CONCURRENCY:-1024}
TIMEOUT=${TIMEOUT:-5s}
RATE=${RATE:-20000}
VISIBILITY=${VISIBILITY-3 6}
VIS_ROUNDS=${VIS_ROUNDS:-3000}
VIS_PINNED=${VIS_PINNED:-}
SYSCALLS=${SYSCALLS:-}
PROFILE=${PROFILE:-}
STRICT=${STRICT:-}
OUT=${OUT:-$(mktemp -d /tmp/karuta-cluster.XXXXXX)}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
mkdir -p "$OUT"

if [ "$(nproc --all)" -lt 2 ]; then
	echo "$0: needs two cores, one for the trackers and one for the load" >&2
	exit 1
fi
if [ -n "$SYSCALLS" ] && ! command -v perf >/dev/null; then
	echo "$0: SYSCALLS=1 needs perf (Debian: linux-perf)" >&2
	exit 1
fi

say() { echo "$(date +%T) $*" >&2; }

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT

(cd "$root" && go build -trimpath -o "$OUT/karuta" ./cmd/karuta)
karuta=$OUT/karuta
connkey=$(head -c 24 /dev/urandom | base64)
# Every client of the bench connects from 127.0.0.1: let twice as many
# HTTP connections in as there are clients, so a connection the client
# has replaced but the node has not yet seen closed is not refused.
maxconn=$((2 * CONCURRENCY > 10000 ? 2 * CONCURRENCY : 10000))

# The shapes: label, size, replicas, full_replication (empty: the
# default), and whether the load goes to every node (spread) or the first
# only (one).
labels=("1 node") sizes=(1) replicas=(1) fulls=("") entries=(spread)
for n in $NODES; do
	[ "$n" = 1 ] && continue
	labels+=("$n nodes") sizes+=("$n") replicas+=("$REPLICAS") fulls+=("$FULL") entries+=(spread)
done
for n in $FULL0; do
	labels+=("$n nodes, full_replication 0") sizes+=("$n") replicas+=("$REPLICAS") fulls+=(0) entries+=(spread)
done
if [ -n "$ONE_ENTRY" ]; then
	labels+=("3 nodes, replicas 1, one entry") sizes+=(3) replicas+=(1) fulls+=("$FULL") entries+=(one)
fi
if [ "${#labels[@]}" -gt 250 ]; then
	echo "$0: too many shapes" >&2
	exit 2
fi

# addr K I: node I of shape K.
addr() { echo "127.0.$(($1 + 1)).$2"; }

# start_shape K WORKLOAD: starts shape K's nodes on core 0 and sets
# shape_pids[K] (commas), and the bench's --url and --metrics arguments.
declare -A shape_pids urls_udp urls_http metrics names
start_shape() {
	local k=$1 wl=$2 n=${sizes[$1]} i a name cl key ps=() uu=() uh=() ms=() ns=()
	key=$(head -c 32 /dev/urandom | base64)
	for i in $(seq "$n"); do
		a=$(addr "$k" "$i")
		name=$wl-s$k-n$i
		cl=
		if [ "$n" -gt 1 ]; then
			cl="cluster: {bind: \"$a:17946\", join: [\"$(addr "$k" 1):17946\"], replicas: ${replicas[$k]}, profile: local, secret_keys: [\"$key\"]${fulls[$k]:+, full_replication: ${fulls[$k]}}${FORWARD_DELAY:+, forward_delay: $FORWARD_DELAY}}"
		fi
		cat >"$OUT/$name.yaml" <<EOF
node: {name: $name}
log: {level: warn}
frontends:
  http: {addr: "$a:16969", max_connections: $maxconn, max_connections_per_ip: $maxconn}
  udp: {addr: "$a:16969", readers: $UDP_READERS, connect_rate: 0, connection_id_keys: ["$connkey"]${UDP_BATCH:+, batch_size: $UDP_BATCH}}
rate_limit: {per_ip: {rate: 0}}
store: {peer_lifetime: 6h, max_peers_per_source: 0}
metrics: {addr: "$a:16880"${PROFILE:+, pprof: true}}
$cl
EOF
		taskset -c 0 "$karuta" serve --config "$OUT/$name.yaml" 2>"$OUT/$name.log" &
		pids+=("$!") ps+=("$!") ns+=("$name")
		ms+=(--metrics "http://$a:16880/metrics")
		if [ "${entries[$k]}" = spread ] || [ "$i" = 1 ]; then
			uu+=(--url "udp://$a:16969/announce") uh+=(--url "http://$a:16969/announce")
		fi
	done
	shape_pids[$k]=$(IFS=, && echo "${ps[*]}")
	urls_udp[$k]=${uu[*]} urls_http[$k]=${uh[*]} metrics[$k]=${ms[*]} names[$k]=${ns[*]}
}

# wait_ready K: waits until every node of shape K answers UDP and, in a
# cluster, until every node's /cluster shows all members alive, the ring
# settled and the node whole, for three polls in a row.
wait_ready() {
	local k=$1 a i
	for i in $(seq "${sizes[$k]}"); do
		a=$(addr "$k" "$i")
		for _ in $(seq 100); do
			if "$karuta" bench --url "udp://$a:16969/announce" --duration 100ms --warmup 0s \
				--concurrency 1 --swarms 1 --peers 1 --timeout 100ms >/dev/null 2>&1; then
				continue 2
			fi
			sleep 0.2
		done
		echo "$0: nothing answers on udp $a:16969 (log: $OUT/$(echo "${names[$k]}" | cut -d' ' -f"$i").log)" >&2
		exit 1
	done
	[ "${sizes[$k]}" -gt 1 ] || return 0
	python3 "$here/clusterwait.py" 90 ${metrics[$k]//--metrics /} || {
		echo "$0: ${labels[$k]} did not settle" >&2
		exit 1
	}
}

# run_bench FILE K PROTO [FLAGS...]: one bench run against shape K from
# core 1. An INVALID run is kept (the tables show it); a bench that
# cannot run at all stops the script.
run_bench() {
	local f=$1 k=$2 proto=$3 u
	shift 3
	if [ "$proto" = udp ]; then u=${urls_udp[$k]}; else u=${urls_http[$k]}; fi
	# shellcheck disable=SC2086 # u and metrics are lists of flags
	taskset -c 1 "$karuta" bench --json $u ${metrics[$k]} --pid "${shape_pids[$k]}" \
		--concurrency "$CONCURRENCY" --timeout "$TIMEOUT" --swarms "$SWARMS" --peers "$PEERS" --zipf "$zipf" "$@" >"$f" 2>"$OUT/bench.log" || {
		if [ ! -s "$f" ]; then
			echo "$0: bench against ${labels[$k]} over $proto failed:" >&2
			cat "$OUT/bench.log" >&2
			exit 1
		fi
	}
	if python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["invalid"] else 1)' "$f"; then
		say "  INVALID: $(python3 -c 'import json,sys; print("; ".join(json.load(open(sys.argv[1]))["invalid_reasons"]))' "$f")" >&2
	fi
}

# profile K WORKLOAD: in the background once the warmup is over, a CPU
# profile of each node of shape K over 6 s.
profile() {
	local k=$1 i
	sleep "${WARMUP%s}"
	for i in $(seq "${sizes[$k]}"); do
		curl -s -o "$OUT/$2-$(echo "${names[$k]}" | cut -d' ' -f"$i").pprof" "http://$(addr "$k" "$i"):16880/debug/pprof/profile?seconds=6" &
	done
	wait
}

# count_syscalls FILE K: in the background once the warmup is over, the
# recvmmsg calls of shape K's processes over the duration, all and those
# that returned datagrams.
count_syscalls() {
	sleep "${WARMUP%s}"
	perf stat -x, -e syscalls:sys_enter_recvmmsg -e syscalls:sys_exit_recvmmsg --filter 'ret > 0' \
		-p "${shape_pids[$2]}" -o "$1" -- sleep "${DURATION%s}" 2>/dev/null || true
}

loadavg_start=$(cat /proc/loadavg)
say "load average at start: $loadavg_start"
for zipf in $ZIPF; do
	wl=z$zipf
	say "workload zipf $zipf: starting ${#labels[@]} shapes"
	for k in "${!labels[@]}"; do start_shape "$k" "$wl"; done
	for k in "${!labels[@]}"; do wait_ready "$k"; done
	for k in "${!labels[@]}"; do
		say "$wl: priming ${labels[$k]} with $PEERS peers"
		run_bench "$OUT/$wl-prime-$k.json" "$k" udp --prime --duration 0s
	done
	for round in $(seq "$ROUNDS"); do
		for proto in $PROTOS; do
			for k in "${!labels[@]}"; do
				say "$wl round $round: ${labels[$k]} over $proto"
				bg=
				if [ -n "$PROFILE" ] && [ "$round" = "$ROUNDS" ] && [ "$proto" = udp ]; then
					profile "$k" "$wl" &
					bg=$!
				elif [ -n "$SYSCALLS" ] && [ "$proto" = udp ]; then
					count_syscalls "$OUT/$wl-$proto-$k-$round.perf" "$k" &
					bg=$!
				fi
				run_bench "$OUT/$wl-$proto-$k-$round.json" "$k" "$proto" --primed \
					--duration "$DURATION" --warmup "$WARMUP"
				if [ -n "$bg" ]; then wait "$bg"; fi
			done
		done
	done
	if [ "$RATE" != 0 ]; then
		for round in $(seq "$ROUNDS"); do
			for k in "${!labels[@]}"; do
				say "$wl round $round: ${labels[$k]} over udp at $RATE/s"
				run_bench "$OUT/$wl-open-$k-$round.json" "$k" udp --primed \
					--duration "$DURATION" --warmup "$WARMUP" --rate "$RATE"
			done
		done
	fi
	for k in "${!labels[@]}"; do
		case " $VISIBILITY " in *" ${sizes[$k]} "*) ;; *) continue ;; esac
		pin=(taskset -c 1)
		if [ -z "$VIS_PINNED" ]; then
			# As on their own hosts: the nodes no longer share one core.
			for p in ${shape_pids[$k]//,/ }; do taskset -a -p -c 0,1 "$p" >/dev/null; done
			pin=()
		fi
		for kind in new existing; do
			say "$wl: visibility across ${labels[$k]}, $kind swarms"
			# shellcheck disable=SC2086 # lists of flags
			"${pin[@]}" "$karuta" bench visibility --json ${urls_udp[$k]} ${metrics[$k]} --rounds "$VIS_ROUNDS" \
				$([ "$kind" = existing ] && echo --existing) >"$OUT/$wl-vis$kind-$k.json" 2>"$OUT/bench.log" ||
				[ -s "$OUT/$wl-vis$kind-$k.json" ] || {
				cat "$OUT/bench.log" >&2
				exit 1
			}
		done
	done
	cleanup
	pids=()
done
loadavg_end=$(cat /proc/loadavg)
say "load average at end: $loadavg_end"

# meta.json: the settings and shapes the report needs.
for k in "${!labels[@]}"; do printf '%s\t%s\t%s\n' "${labels[$k]}" "${sizes[$k]}" "${replicas[$k]}"; done |
	python3 -c '
import json, sys
(out, rounds, rate, zipf, protos, swarms, peers, conc, dur, warm, la0, la1) = sys.argv[1:]
shapes = [{"label": l, "size": int(n), "replicas": int(r)} for l, n, r in (x.rstrip("\n").split("\t") for x in sys.stdin)]
json.dump({"shapes": shapes, "rounds": int(rounds), "rate": rate, "zipf": zipf.split(), "protos": protos.split(),
           "swarms": int(swarms), "peers": int(peers), "concurrency": int(conc), "duration": dur, "warmup": warm,
           "loadavg_start": la0, "loadavg_end": la1}, open(out + "/meta.json", "w"), indent=1)
' "$OUT" "$ROUNDS" "$RATE" "$ZIPF" "$PROTOS" "$SWARMS" "$PEERS" "$CONCURRENCY" "$DURATION" "$WARMUP" "$loadavg_start" "$loadavg_end"
python3 "$here/clusterreport.py" "$OUT"
echo "runs kept in $OUT" >&2
if [ -n "$STRICT" ] && grep -lE '"invalid": ?true' "$OUT"/*.json >/dev/null 2>&1; then
	echo "$0: some runs were INVALID" >&2
	exit 1
fi
