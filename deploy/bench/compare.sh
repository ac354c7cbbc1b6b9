#!/usr/bin/env bash
# Side-by-side load runs on one machine, the trackers pinned to core 0 and
# `karuta bench` to core 1, alternating round by round so machine noise
# falls on both sides alike. Prints markdown tables of medians.
#
#   deploy/bench/compare.sh opentracker   # karuta vs Debian's opentracker and the floor, UDP and HTTP
#   deploy/bench/compare.sh cluster       # the scale-out curve: one node vs clusters of NODES
#
# The cluster mode is deploy/bench/cluster.sh; its header lists its
# settings (NODES="1 3 4 6 9", ZIPF="0 1.1", CONCURRENCY, ...).
#
# The opentracker mode measures three UDP servers in turn: the floor
# (`karuta bench floor`, a server on the UDP frontend's socket path that
# answers with fixed bytes and does no tracker work), opentracker and a
# Karuta node; then opentracker and Karuta over HTTP keep-alive. It does so
# for every workload of WORKLOADS, round after round, and prints Karuta's
# CPU per response against the others' (the median of each round's ratio)
# beside issue 21's targets: at most 0.9 x opentracker's and 1.2 x the
# floor's over UDP, at most 31 us over HTTP keep-alive. With BEFORE set to
# a git revision, a node built from that revision ("before") runs in the
# same rounds, so a change is measured against the code before it in one
# run.
#
# Environment: ROUNDS (3), DURATION (10s), WARMUP (3s), WORKLOADS
# ("20000:0 100000:0 100000:1.1": swarms:zipf pairs, zipf 0 is uniform),
# HTTP_WORKLOADS (the last of WORKLOADS; the HTTP runs), PEERS (1000000),
# WORKERS (4) sockets and CONCURRENCY (64) clients of the bench, RATE
# (20000; 0 skips the open-loop runs, which use the last workload), PROFILE
# (unset; 1 saves a 6 s CPU profile of the karuta node during the last
# round's UDP run of each workload, as SWARMS-ZIPF-NAME.pprof), PERF
# (unset; 1 records the same with `perf record -g`, kernel included, as
# SWARMS-ZIPF-NAME.perf.data and a flat report SWARMS-ZIPF-NAME.perf.txt),
# BEFORE (unset; a git revision to measure beside the working tree), OUT
# (a new temporary directory; keeps every run's JSON).
# Needs Linux, taskset, curl (PROFILE only), perf (PERF only), python3 and
# two or more cores;
# the opentracker mode installs Debian's opentracker when it is missing
# (root, apt).
set -euo pipefail

mode=${1:-}
case $mode in
opentracker) ;;
cluster) exec "$(dirname "$0")/cluster.sh" ;;
*)
	echo "usage: $0 opentracker|cluster" >&2
	exit 2
	;;
esac

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
WORKLOADS=${WORKLOADS:-20000:0 100000:0 100000:1.1}
read -ra workloads <<<"$WORKLOADS"
HTTP_WORKLOADS=${HTTP_WORKLOADS:-${workloads[-1]}}
PEERS=${PEERS:-1000000}
WORKERS=${WORKERS:-4}
CONCURRENCY=${CONCURRENCY:-64}
RATE=${RATE:-20000}
PROFILE=${PROFILE:-}
PERF=${PERF:-}
BEFORE=${BEFORE:-}
OUT=${OUT:-$(mktemp -d /tmp/karuta-compare.XXXXXX)}
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT"
chmod 755 "$OUT"

if [ "$(nproc --all)" -lt 2 ]; then
	echo "$0: needs two cores, one for the trackers and one for the load" >&2
	exit 1
fi

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT

(cd "$root" && go build -trimpath -o "$OUT/karuta" ./cmd/karuta)
karuta=$OUT/karuta
if [ -n "$BEFORE" ]; then
	mkdir -p "$OUT/before-src"
	git -C "$root" archive "$BEFORE" | tar -x -C "$OUT/before-src"
	(cd "$OUT/before-src" && go build -trimpath -o "$OUT/karuta-before" ./cmd/karuta)
	echo "before: $(git -C "$root" rev-parse --short "$BEFORE"), after: $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD || echo ' with changes')" >&2
fi

# Each target: a label, its announce hosts (host:port, space-separated; the
# bench spreads its clients over them), the pids to measure (commas) and
# the names of its karuta nodes (for profiles).
labels=() hosts=() measured=() names=() protos=()
declare -A metrics_of

# node NAME UDP_HTTP_PORT [EXTRA_YAML]: starts a karuta node ($BIN, or the
# working tree's) on core 0 and sets $started to its pid. Its metrics and
# pprof listen on PORT+20000.
# connect_rate, rate_limit and max_peers_per_source are off: every bench
# client connects from 127.0.0.1, so the per-source limits (20 connects a
# second after a burst of 200, 30 requests a second after 300, 64 peers
# of one address in a swarm) would refuse the load as a flood.
node() {
	local name=$1 port=$2
	cat >"$OUT/$name.yaml" <<EOF
node: {name: $name}
log: {level: warn}
frontends:
  http: {addr: "127.0.0.1:$port"}
  udp: {addr: "127.0.0.1:$port", readers: 1, connect_rate: 0, connection_id_keys: ["compare-script-connection-id-key"]}
metrics: {addr: "127.0.0.1:$((port + 20000))"$([ -n "$PROFILE" ] && echo ", pprof: true")}
rate_limit: {per_ip: {rate: 0}}
store: {max_peers_per_source: 0}
${3:-}
EOF
	metrics_of[$name]=127.0.0.1:$((port + 20000))
	taskset -c 0 "${BIN:-$karuta}" serve --config "$OUT/$name.yaml" 2>"$OUT/$name.log" &
	started=$!
	pids+=("$started")
}

# wait_udp PORT: waits until a tracker answers on the port.
wait_udp() {
	for _ in $(seq 50); do
		if "$karuta" bench --url "udp://127.0.0.1:$1/announce" --duration 100ms --warmup 0s \
			--concurrency 1 --swarms 1 --peers 1 --timeout 100ms >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.2
	done
	echo "$0: nothing answers on udp 127.0.0.1:$1" >&2
	exit 1
}

case $mode in
opentracker)
	if ! command -v opentracker >/dev/null; then
		apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq opentracker >/dev/null
	fi
	for w in "${workloads[@]}"; do
		"$karuta" bench --list-infohashes --swarms "${w%%:*}"
	done | sort -u >"$OUT/whitelist.txt"
	chmod 644 "$OUT/whitelist.txt"
	cat >"$OUT/opentracker.conf" <<EOF
listen.tcp 127.0.0.1:26969
listen.udp 127.0.0.1:26969
access.whitelist ./whitelist.txt
tracker.rootdir $OUT
EOF
	taskset -c 0 opentracker -f "$OUT/opentracker.conf" >"$OUT/opentracker.log" 2>&1 &
	ot=$!
	pids+=("$ot")
	taskset -c 0 "$karuta" bench floor --addr 127.0.0.1:36969 --readers 1 2>"$OUT/floor.log" &
	fl=$!
	pids+=("$fl")
	node karuta 16969
	labels+=(floor opentracker karuta) hosts+=(127.0.0.1:36969 127.0.0.1:26969 127.0.0.1:16969)
	measured+=("$fl" "$ot" "$started") names+=("" "" karuta) protos+=(udp "udp http" "udp http")
	if [ -n "$BEFORE" ]; then
		BIN=$OUT/karuta-before node before 18969
		labels+=(before) hosts+=(127.0.0.1:18969) measured+=("$started") names+=(before) protos+=("udp http")
	fi
	;;
esac
for hs in "${hosts[@]}"; do
	for h in $hs; do wait_udp "${h#*:}"; done
done

# bench OUTFILE PROTO TARGET WORKLOAD [FLAGS...]: one run of the bench
# against target TARGET from core 1.
bench() {
	local f=$1 proto=$2 i=$3 w=$4 h
	shift 4
	local u=()
	for h in ${hosts[$i]}; do u+=(--url "$proto://$h/announce"); done
	taskset -c 1 "$karuta" bench --json "${u[@]}" --duration "$DURATION" --warmup "$WARMUP" \
		--swarms "${w%%:*}" --peers "$PEERS" --zipf "${w#*:}" --workers "$WORKERS" --concurrency "$CONCURRENCY" \
		--pid "${measured[$i]}" "$@" >"$f" 2>"$OUT/bench.log" || {
		echo "$0: bench against ${labels[$i]} over $proto failed:" >&2
		cat "$OUT/bench.log" >&2
		exit 1
	}
}

# profile NAME PID FILE: in the background, once the warmup is over,
# saves a CPU profile of the node over 6 s, as FILE-NAME.pprof (PROFILE)
# and FILE-NAME.perf.data with its report FILE-NAME.perf.txt (PERF).
profile() {
	sleep "${WARMUP%s}"
	if [ -n "$PROFILE" ]; then
		curl -s -o "$3-$1.pprof" "http://${metrics_of[$1]}/debug/pprof/profile?seconds=6" &
	fi
	if [ -n "$PERF" ]; then
		perf record -q -e cpu-clock -g -p "$2" -o "$3-$1.perf.data" -- sleep 6 >/dev/null 2>&1 &&
			perf report -i "$3-$1.perf.data" --no-children --sort dso,symbol -g none --percent-limit 0.4 2>/dev/null >"$3-$1.perf.txt" &
	fi
	wait
}

echo "before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/loadavg.txt" >&2
for round in $(seq "$ROUNDS"); do
	for w in "${workloads[@]}"; do
		for proto in udp http; do
			if [ "$proto" = http ] && [[ " $HTTP_WORKLOADS " != *" $w "* ]]; then continue; fi
			for i in "${!labels[@]}"; do
				if [[ " ${protos[$i]} " != *" $proto "* ]]; then continue; fi
				echo "round $round, $w: ${labels[$i]} over $proto" >&2
				prof=
				if [ -n "$PROFILE$PERF" ] && [ "$round" = "$ROUNDS" ] && [ "$proto" = udp ] && [ -n "${names[$i]}" ]; then
					profile "${names[$i]}" "${measured[$i]}" "$OUT/${w%%:*}-${w#*:}" &
					prof=$!
				fi
				bench "$OUT/$proto-$w-$i-$round.json" "$proto" "$i" "$w"
				if [ -n "$prof" ]; then wait "$prof"; fi
			done
		done
	done
done
if [ "$RATE" != 0 ]; then
	for round in $(seq "$ROUNDS"); do
		for i in "${!labels[@]}"; do
			echo "round $round: ${labels[$i]} over udp at $RATE/s" >&2
			bench "$OUT/open-$i-$round.json" udp "$i" "${workloads[-1]}" --rate "$RATE" --concurrency 512
		done
	done
fi
echo "after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/loadavg.txt" >&2

python3 - "$OUT" "$ROUNDS" "$RATE" "$WORKLOADS" "$HTTP_WORKLOADS" "${labels[@]}" <<'EOF'
import json, os, statistics, sys
out, rounds, rate, labels = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[6:]
workloads, http_workloads = sys.argv[4].split(), sys.argv[5].split()
def load(proto, w, i):
    files = [f"{out}/{proto}-{w}-{i}-{r}.json" for r in range(1, rounds + 1)]
    if not all(os.path.exists(f) for f in files):
        return None
    return [json.load(open(f)) for f in files]
def name(w):
    swarms, zipf = w.split(":")
    return f"{int(swarms):,} swarms, " + ("uniform" if float(zipf) == 0 else f"Zipf {zipf}")
print(f"| workload | tracker | protocol | responses/s | server CPU per response (µs) | p50 / p99 latency (ms) | errors+timeouts | peak RSS (MiB) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for w in workloads:
  for proto in ("udp", "http"):
    for i, label in enumerate(labels):
        runs = load(proto, w, i)
        if runs is None:
            continue
        med = lambda f: statistics.median(f(r) for r in runs)
        cpu = [r["server"]["cpu_per_request_us"] for r in runs]
        print(f"| {name(w)} | {label} | {proto} | {med(lambda r: r['responses_per_sec']):,.0f} "
              f"| **{statistics.median(cpu):.1f}** ({min(cpu):.1f}–{max(cpu):.1f}) "
              f"| {med(lambda r: r['latency_us']['p50'])/1e3:.2f} / {med(lambda r: r['latency_us']['p99'])/1e3:.2f} "
              f"| {sum(r['errors'] + r['timeouts'] for r in runs)} "
              f"| {max(r['server']['peak_rss_bytes'] for r in runs)/2**20:.0f} |")
# Each round ran the targets back to back, so a round's ratio compares like
# with like; the median of the rounds' ratios is the figure.
print()
print("Karuta's server CPU per response against the others', median of the rounds' ratios (range):")
print()
print("| workload | protocol | tracker | / opentracker (target ≤ 0.9) | / floor (target ≤ 1.2) | / before |")
print("| --- | --- | --- | --- | --- | --- |")
def ratio(proto, w, mine, other, target=None):
    if other not in labels or mine not in labels or other == mine:
        return "–"
    a, b = load(proto, w, labels.index(mine)), load(proto, w, labels.index(other))
    if a is None or b is None:
        return "–"
    rs = [x["server"]["cpu_per_request_us"] / y["server"]["cpu_per_request_us"] for x, y in zip(a, b)]
    m = statistics.median(rs)
    verdict = "" if target is None else (" met" if m <= target else " NOT met")
    return f"**{m:.2f}** ({min(rs):.2f}–{max(rs):.2f}){verdict}"
for w in workloads:
    for proto in ("udp", "http"):
        for mine in ("karuta", "before"):
            if mine not in labels or load(proto, w, labels.index(mine)) is None:
                continue
            floor = ratio(proto, w, mine, "floor", 1.2) if proto == "udp" else "–"
            print(f"| {name(w)} | {proto} | {mine} | {ratio(proto, w, mine, 'opentracker', 0.9)} | {floor} | {ratio(proto, w, mine, 'before')} |")
for w in http_workloads:
    runs = load("http", w, labels.index("karuta"))
    if runs:
        cpu = statistics.median(r["server"]["cpu_per_request_us"] for r in runs)
        print()
        print(f"Karuta over HTTP keep-alive, {name(w)}: **{cpu:.1f} µs** of server CPU per response (target ≤ 31 µs): "
              + ("met" if cpu <= 31 else "NOT met"))
print()
print("Load average before and after the runs: " + open(f"{out}/loadavg.txt").read().strip().replace("\n", "; "))
if rate != "0":
    print()
    print(f"Open loop over UDP at {rate} requests/s (medians):")
    print()
    print("| tracker | answered/s | server CPU per response (µs) | p50 / p99 / p99.9 latency (ms) | errors+timeouts |")
    print("| --- | --- | --- | --- | --- |")
    for i, label in enumerate(labels):
        runs = [json.load(open(f"{out}/open-{i}-{r}.json")) for r in range(1, rounds + 1)]
        med = lambda f: statistics.median(f(r) for r in runs)
        print(f"| {label} | {med(lambda r: r['requests_per_sec']):,.0f} "
              f"| {med(lambda r: r['server']['cpu_per_request_us']):.1f} "
              f"| {med(lambda r: r['latency_us']['p50'])/1e3:.2f} / **{med(lambda r: r['latency_us']['p99'])/1e3:.2f}** / {med(lambda r: r['latency_us']['p999'])/1e3:.2f} "
              f"| {sum(r['errors'] + r['timeouts'] for r in runs)} |")
EOF
echo "runs kept in $OUT" >&2
