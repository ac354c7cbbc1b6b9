#!/usr/bin/env bash
# Side-by-side load runs on one machine, the trackers pinned to core 0 and
# `karuta bench` to core 1, alternating round by round so machine noise
# falls on both sides alike. Prints a markdown table of medians.
#
#   deploy/bench/compare.sh opentracker   # karuta vs Debian's opentracker, UDP and HTTP
#   deploy/bench/compare.sh cluster       # one node vs three nodes (replicas 1), UDP and HTTP
#
# Environment: ROUNDS (3), DURATION (10s), WARMUP (3s), SWARMS (100000),
# PEERS (1000000), OUT (a new temporary directory; keeps every run's JSON).
# Needs Linux, taskset, python3 and two or more cores; the opentracker mode
# installs Debian's opentracker when it is missing (root, apt).
set -euo pipefail

mode=${1:-}
case $mode in
opentracker | cluster) ;;
*)
	echo "usage: $0 opentracker|cluster" >&2
	exit 2
	;;
esac

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
SWARMS=${SWARMS:-100000}
PEERS=${PEERS:-1000000}
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

# node NAME UDP_HTTP_PORT [EXTRA_YAML]: starts a karuta node on core 0 and
# sets $started to its pid.
node() {
	local name=$1 port=$2
	cat >"$OUT/$name.yaml" <<EOF
node: {name: $name}
log: {level: warn}
frontends:
  http: {addr: "127.0.0.1:$port"}
  udp: {addr: "127.0.0.1:$port", readers: 1, connection_id_keys: ["compare-script-connection-id-key"]}
metrics: {addr: ""}
${3:-}
EOF
	taskset -c 0 "$karuta" serve --config "$OUT/$name.yaml" 2>"$OUT/$name.log" &
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

# Each target: label, announce URL stem (host:port), pids to measure.
labels=() hosts=() measured=()
case $mode in
opentracker)
	if ! command -v opentracker >/dev/null; then
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opentracker >/dev/null
	fi
	"$karuta" bench --list-infohashes --swarms "$SWARMS" >"$OUT/whitelist.txt"
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
	node karuta 16969
	labels+=(karuta opentracker) hosts+=(127.0.0.1:16969 127.0.0.1:26969) measured+=("$started" "$ot")
	;;
cluster)
	node single 16969
	labels+=("1 node") hosts+=(127.0.0.1:16969) measured+=("$started")
	key=$(head -c 32 /dev/urandom | base64)
	all=()
	for i in 1 2 3; do
		cluster="cluster: {bind: \"127.0.0.$i:17946\", join: [\"127.0.0.1:17946\"], replicas: 1, profile: local, secret_keys: [\"$key\"]}"
		node "n$i" $((17969 + i)) "$cluster"
		all+=("$started")
	done
	labels+=("3 nodes, replicas 1") hosts+=(127.0.0.1:17970) measured+=("$(
		IFS=,
		echo "${all[*]}"
	)")
	;;
esac
for h in "${hosts[@]}"; do wait_udp "${h#*:}"; done
sleep 2 # let a cluster settle its ring

for round in $(seq "$ROUNDS"); do
	for proto in udp http; do
		for i in "${!labels[@]}"; do
			f="$OUT/$proto-$i-$round.json"
			echo "round $round: ${labels[$i]} over $proto" >&2
			taskset -c 1 "$karuta" bench --json --url "$proto://${hosts[$i]}/announce" \
				--duration "$DURATION" --warmup "$WARMUP" --swarms "$SWARMS" --peers "$PEERS" \
				--pid "${measured[$i]}" >"$f" 2>"$OUT/bench.log" || {
				echo "$0: bench against ${labels[$i]} over $proto failed:" >&2
				cat "$OUT/bench.log" >&2
				exit 1
			}
		done
	done
done

python3 - "$OUT" "$ROUNDS" "${labels[@]}" <<'EOF'
import json, statistics, sys
out, rounds, labels = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print(f"| tracker | protocol | responses/s | server CPU per response (µs) | p50 / p99 latency (ms) | errors+timeouts | peak RSS (MiB) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for proto in ("udp", "http"):
    for i, label in enumerate(labels):
        runs = [json.load(open(f"{out}/{proto}-{i}-{r}.json")) for r in range(1, rounds + 1)]
        med = lambda f: statistics.median(f(r) for r in runs)
        cpu = [r["server"]["cpu_per_request_us"] for r in runs]
        print(f"| {label} | {proto} | {med(lambda r: r['responses_per_sec']):,.0f} "
              f"| **{statistics.median(cpu):.1f}** ({min(cpu):.1f}–{max(cpu):.1f}) "
              f"| {med(lambda r: r['latency_us']['p50'])/1e3:.2f} / {med(lambda r: r['latency_us']['p99'])/1e3:.2f} "
              f"| {sum(r['errors'] + r['timeouts'] for r in runs)} "
              f"| {max(r['server']['peak_rss_bytes'] for r in runs)/2**20:.0f} |")
EOF
echo "runs kept in $OUT" >&2
