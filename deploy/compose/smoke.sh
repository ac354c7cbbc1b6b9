#!/usr/bin/env bash
# Smoke test of the compose cluster: every node sees 3 alive members and a
# settled ring, and a peer announced to n1 is returned by n2 and n3.
# Run by hand and by the deploy stage of `make test` (deploy/test/run.sh).
# Exits non-zero on the first failure.
#
#   deploy/compose/smoke.sh          # check a cluster that is already up
#   deploy/compose/smoke.sh --up     # start it first, stop it at the end
#
# Needs curl and od. Host ports are those of docker-compose.yml; override
# with HOST=, METRICS_PORTS= and TRACKER_PORTS= (space-separated, n1 first).
# INFO_HASH= (40 hex digits) announces that swarm instead of a random one,
# and ANNOUNCE_QUERY= is appended to every announce's query, e.g.
# "&jwt=TOKEN" for nodes that run the jwt hook.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
host=${HOST:-127.0.0.1}
read -r -a metrics <<<"${METRICS_PORTS:-6881 6882 6883}"
read -r -a tracker <<<"${TRACKER_PORTS:-6961 6962 6963}"
wait_secs=${WAIT_SECS:-60}

fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
say() { echo "smoke: $*"; }

compose() {
	if docker compose version >/dev/null 2>&1; then
		docker compose -f "$here/docker-compose.yml" "$@"
	elif command -v docker-compose >/dev/null 2>&1; then
		docker-compose -f "$here/docker-compose.yml" "$@"
	else
		fail "neither 'docker compose' nor docker-compose is installed"
	fi
}

if [[ ${1:-} == --up ]]; then
	say "starting the cluster"
	compose up -d
	trap 'say "stopping the cluster"; compose down' EXIT
fi

# 1. Membership: every node reports 3 alive members and a settled ring.
for i in 0 1 2; do
	n=n$((i + 1)) url="http://$host:${metrics[$i]}/cluster"
	deadline=$((SECONDS + wait_secs)) body=""
	while :; do
		body=$(curl -fsS --max-time 2 "$url" 2>/dev/null || true)
		alive=$(grep -c '"state": "alive"' <<<"$body" || true)
		if [[ $alive -eq 3 ]] && grep -q '"settled": true' <<<"$body"; then
			break
		fi
		((SECONDS < deadline)) || fail "$n ($url): want 3 alive members and settled: true within ${wait_secs}s; last answer:
${body:-<none>}"
		sleep 1
	done
	say "$n: 3 members alive, ring settled"
done

# 2. Announces. A fresh random infohash per run, so peers left from an
# earlier run (they live 31 minutes) cannot make the check pass.
urlenc() { od -An -v -tx1 | tr -d ' \n' | sed 's/../%&/g'; }
if [[ -n ${INFO_HASH:-} ]]; then
	[[ $INFO_HASH =~ ^[0-9a-fA-F]{40}$ ]] || fail "INFO_HASH=$INFO_HASH is not 40 hex digits"
	info_hash=$(sed 's/../%&/g' <<<"$INFO_HASH")
else
	info_hash=$(head -c 20 /dev/urandom | urlenc)
fi
extra_query=${ANNOUNCE_QUERY:-}

# announce PORT NODE_INDEX: announces a leecher listening on PORT to a node
# and prints the compact peer list of the answer as hex, 12 digits a peer.
announce() {
	local port=$1 i=$2 peer_id hex rest len
	peer_id=$(printf -- '-SM0001-%012d' "$port" | urlenc) # 20 bytes
	hex=$(curl -fsS --max-time 5 "http://$host:${tracker[$i]}/announce?info_hash=$info_hash&peer_id=$peer_id&port=$port&uploaded=0&downloaded=0&left=1000&compact=1&numwant=50$extra_query" |
		od -An -v -tx1 | tr -d ' \n') || fail "announce to n$((i + 1)) (port ${tracker[$i]}) failed"
	if [[ $hex == *6661696c75726520726561736f6e* ]]; then # "failure reason"
		fail "n$((i + 1)) refused the announce: $(xxd -r -p <<<"$hex" 2>/dev/null || echo "$hex")"
	fi
	# The answer is bencoded: ...5:peers<len>:<len bytes>...
	rest=${hex#*353a7065657273} # after "5:peers"
	[[ $rest != "$hex" ]] || fail "n$((i + 1)) answered without peers: $(xxd -r -p <<<"$hex" 2>/dev/null || echo "$hex")"
	len=""
	while [[ -n $rest && ${rest:0:2} != 3a ]]; do # digits up to ":"
		len+=$((16#${rest:0:2} - 48))
		rest=${rest:2}
	done
	echo "${rest:2:$((len * 2))}"
}

# has_port HEX PORT: whether a compact IPv4 peer list holds a peer on PORT.
has_port() {
	local hex=$1 want
	want=$(printf '%04x' "$2")
	for ((o = 0; o < ${#hex}; o += 12)); do
		[[ ${hex:o+8:4} == "$want" ]] && return 0
	done
	return 1
}

say "announcing peer :51001 to n1 (info_hash $info_hash)"
announce 51001 0 >/dev/null
for i in 1 2; do
	port=$((51001 + i)) deadline=$((SECONDS + 10))
	while :; do
		peers=$(announce "$port" "$i")
		has_port "$peers" 51001 && break
		((SECONDS < deadline)) || fail "n$((i + 1)) never returned the peer announced to n1; last peers: ${peers:-none}"
		sleep 0.5
	done
	say "n$((i + 1)): returns the peer announced to n1"
done
say "PASS"
