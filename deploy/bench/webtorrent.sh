#!/usr/bin/env bash
# WebTorrent benchmarks of docs/performance.md, run as users run nodes:
# real `karuta serve` processes on loopback, load from `karuta bench-ws` in
# another process. Trackers are pinned to core 0, the load to core 1.
#
#   flock /tmp/karuta-bench.lock deploy/bench/webtorrent.sh [idle|relay|cluster|all]
#
# idle:    one node holds SOCKETS idle peers (default 19000: this machine's
#          hard open-file limit is 20000 per process); RSS per peer.
# relay:   one node relays offers and answers; messages per tracker CPU-second.
# cluster: two nodes; ROUNDS alternating rounds of relays within one node
#          and relays across the two (leechers on one, seeders on the
#          other); the ratio of CPU per relayed message, cross over same.
set -euo pipefail
cd "$(dirname "$0")/../.."
what="${1:-all}"
SOCKETS="${SOCKETS:-19000}"
RELAY_SOCKETS="${RELAY_SOCKETS:-2000}"
DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-3}"
bin="$(mktemp -d)/karuta"
go build -o "$bin" ./cmd/karuta
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
start() { # config → pid in $pid
	taskset -c 0 "$bin" serve --config "$1" >"/tmp/karuta-wsbench-$(basename "$1").log" 2>&1 &
	pid=$!
	pids+=("$pid")
	sleep 1
}
bench() { taskset -c 1 "$bin" bench-ws "$@" 2>/dev/null; }
echo "load average: $(cat /proc/loadavg)"

if [[ $what == idle || $what == all ]]; then
	start deploy/bench/webtorrent-node.yaml
	echo "== idle: $SOCKETS sockets on one node"
	bench --url ws://127.0.0.1:18000/announce --mode idle --sockets "$SOCKETS" --sources 8 --swarms 2000 --settle 130s --pid "$pid"
	cleanup; pids=()
fi
if [[ $what == relay || $what == all ]]; then
	start deploy/bench/webtorrent-node.yaml
	echo "== relay: one node, $RELAY_SOCKETS sockets"
	bench --url ws://127.0.0.1:18000/announce --mode relay --sockets "$RELAY_SOCKETS" --swarms 100 --duration "$DURATION" --pid "$pid"
	cleanup; pids=()
fi
if [[ $what == cluster || $what == all ]]; then
	start deploy/bench/webtorrent-cluster-1.yaml; p1=$pid
	start deploy/bench/webtorrent-cluster-2.yaml; p2=$pid
	for _ in $(seq 100); do # until node 1 sees node 2
		curl -s 127.0.1.1:18001/cluster | grep -q '"name": "wsbench2"' && break
		sleep 0.2
	done
	curl -s 127.0.1.1:18001/cluster | grep -q '"name": "wsbench2"' || { echo "the two nodes did not form a cluster" >&2; exit 1; }
	for r in $(seq "$ROUNDS"); do
		echo "== round $r: relays within node 1 (both nodes measured)"
		out=$(bench --url ws://127.0.1.1:18000/announce --mode relay --sockets "$RELAY_SOCKETS" --swarms 100 --duration "$DURATION" --pid "$p1,$p2")
		echo "$out"
		same=$(awk '/per CPU-second/ {print $(NF-4)}' <<<"$out")
		echo "== round $r: relays across nodes (leechers on node 1, seeders on node 2)"
		out=$(bench --url ws://127.0.1.1:18000/announce --url ws://127.0.1.2:18010/announce --split --mode relay --sockets "$RELAY_SOCKETS" --swarms 100 --duration "$DURATION" --pid "$p1,$p2")
		echo "$out"
		cross=$(awk '/per CPU-second/ {print $(NF-4)}' <<<"$out")
		echo "signals node 1 sent to node 2 so far: $(curl -s 127.0.1.1:18001/metrics | awk '/^karuta_cluster_signals_total\{result="sent"\}/ {print $2}')"

		awk -v s="$same" -v c="$cross" 'BEGIN { printf "round CPU per relayed message, cross-node / same-node: %.2f\n", s / c }'
	done
fi
echo "load average: $(cat /proc/loadavg)"
