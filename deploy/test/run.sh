#!/usr/bin/env bash
# The deploy stage of `make test` (make deploy-test): runs the files under
# deploy/ for real and fails when any of them misbehaves.
#
#  1. promtool checks prometheus.yml and alerts.yml and runs the alert unit
#     tests (deploy/prometheus/alerts_test.yml);
#  2. the Kubernetes kustomization renders and the config it carries passes
#     `karuta config check`;
#  3. deploy/docker/build.sh builds the FROM-scratch image from a fresh
#     static binary, and the 3-node compose cluster comes up on free host
#     ports, with the hooks of deploy/test/hooks*.yaml (rate_limit,
#     torrent_approval, and jwt on n3);
#  4. deploy/compose/smoke.sh passes, and a full scrape of every node
#     lists its swarm;
#  5. a Prometheus on the host (Debian's package) scrapes the cluster every
#     2s with alerts.yml's `for` windows cut to 10s, while `karuta bench`
#     loads the nodes over UDP and HTTP (bounded, loopback ports only);
#  6. stopping n2 fires KarutaNodeDown in that Prometheus, starting it again
#     resolves it, and n2 comes back with the swarm file it wrote on SIGTERM;
#  7. every expression of every panel of the Grafana dashboard returns data,
#     its variables resolved as Grafana does (deploy/test/deploycheck);
#  8. the systemd unit passes `systemd-analyze verify` (any warning fails)
#     and `systemd-analyze security` scores it at most 2.0 (installs
#     Debian's systemd, which needs not be running: CI's container has no
#     systemd as PID 1).
#
# Everything it starts (containers, network, image, Prometheus) is removed
# on exit, pass or fail. Needs root or sudo for apt-get when prometheus is
# missing, and a running Docker engine. KEEP=1 leaves the temp dir.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
start=$SECONDS
run_id="karutadeploytest$$"
image="karuta-deploytest:$$"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/karuta-deploytest.XXXXXX")
prom_pid=""
compose_up=""

say() { echo "deploy-test: [$((SECONDS - start))s] $*"; }
fail() { echo "deploy-test: FAIL: $*" >&2; exit 1; }

compose() {
	local files=(-f deploy/compose/docker-compose.yml -f "$tmp/override.yml")
	if docker compose version >/dev/null 2>&1; then
		docker compose -p "$run_id" "${files[@]}" "$@"
	else
		docker-compose -p "$run_id" "${files[@]}" "$@"
	fi
}

cleanup() {
	local rc=$?
	set +e
	if [[ -n $prom_pid ]]; then
		kill "$prom_pid" 2>/dev/null
		wait "$prom_pid" 2>/dev/null
	fi
	if [[ -n $compose_up ]]; then
		if [[ $rc -ne 0 ]]; then
			echo "deploy-test: logs of the cluster (last 40 lines per node):" >&2
			compose logs --no-color --tail 40 >&2 2>/dev/null
		fi
		compose down --volumes --remove-orphans -t 5 >/dev/null 2>&1
	fi
	docker image rm -f "$image" >/dev/null 2>&1
	if [[ -n ${KEEP:-} ]]; then
		echo "deploy-test: kept $tmp" >&2
	else
		rm -rf "$tmp"
	fi
	if [[ $rc -eq 0 ]]; then
		say "PASS"
	else
		echo "deploy-test: FAILED (exit $rc) after $((SECONDS - start))s" >&2
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- What the stage needs -------------------------------------------------
command -v docker >/dev/null || fail "docker is not installed"
docker info >/dev/null 2>&1 || fail "the Docker engine does not answer"
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null ||
	fail "neither 'docker compose' nor docker-compose is installed"
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
	say "installing Debian's prometheus (prometheus, promtool)"
	sudo=""
	[[ $(id -u) == 0 ]] || sudo=sudo
	$sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends prometheus >/dev/null
fi
go build -o "$tmp/deploycheck" ./deploy/test/deploycheck
check="$tmp/deploycheck"

# --- 1. Prometheus config and alert rules ---------------------------------
say "promtool: config, rules, alert unit tests"
promtool check config deploy/prometheus/prometheus.yml >/dev/null
promtool check rules deploy/prometheus/alerts.yml >/dev/null
promtool test rules deploy/prometheus/alerts_test.yml

# --- 3a. The image (its binary also runs the checks below on the host) ----
say "building the image $image"
IMAGE=$image deploy/docker/build.sh >/dev/null
karuta="$root/deploy/docker/karuta"

# --- 8. The systemd unit (early: it needs only the binary) -------------------
# verify checks that ExecReload's /bin/kill exists too (Debian's procps).
if ! command -v systemd-analyze >/dev/null || [[ ! -x /bin/kill ]]; then
	say "installing Debian's systemd and procps (systemd-analyze, kill)"
	sudo=""
	[[ $(id -u) == 0 ]] || sudo=sudo
	$sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends systemd procps >/dev/null
fi
say "systemd-analyze: verify and security of deploy/systemd/karuta.service"
mkdir -p "$tmp/unit"
# The unit names the installed binary; point it at the one just built.
sed "s#/usr/local/bin/karuta#$karuta#" deploy/systemd/karuta.service >"$tmp/unit/karuta.service"
grep -q "ExecStart=$karuta serve" "$tmp/unit/karuta.service" || fail "could not point the test copy of karuta.service at $karuta"
verify=$(systemd-analyze verify "$tmp/unit/karuta.service" 2>&1) || fail "systemd-analyze verify: $verify"
[[ -z $verify ]] || fail "systemd-analyze verify warns about karuta.service: $verify"
systemd-analyze security --offline=true --threshold=20 "$tmp/unit/karuta.service" >"$tmp/unit/security" 2>&1 ||
	{ cat "$tmp/unit/security" >&2; fail "karuta.service is less hardened than systemd-analyze security 2.0"; }
say "$(tail -n 1 "$tmp/unit/security" | tr -d '→')"

# --- 2. Kubernetes ----------------------------------------------------------
say "rendering deploy/kubernetes"
if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
	kubectl kustomize deploy/kubernetes >"$tmp/k8s.yaml"
else
	# No kubectl: the same render with kustomize itself, from the Go module proxy.
	go run sigs.k8s.io/kustomize/kustomize/v5@v5.5.0 build deploy/kubernetes >"$tmp/k8s.yaml"
fi
"$check" k8s-config -rendered "$tmp/k8s.yaml" -out "$tmp/k8s-karuta.yaml"
"$karuta" config check "$tmp/k8s-karuta.yaml"

# --- 3b. The compose cluster, with hooks ------------------------------------
read -r p1 p2 p3 m1 m2 m3 pp <<<"$("$check" ports 7)"
export N1_PORT=$p1 N2_PORT=$p2 N3_PORT=$p3 N1_METRICS_PORT=$m1 N2_METRICS_PORT=$m2 N3_METRICS_PORT=$m3
export KARUTA_IMAGE=$image
"$check" jwt-key "$tmp"
for n in n1 n2 n3; do
	hooks=deploy/test/hooks.yaml
	[[ $n == n3 ]] && hooks=deploy/test/hooks-jwt.yaml
	# The test copies also answer full scrapes, checked after the load, and
	# keep their swarms in a swarm file on a host directory, checked when n2
	# restarts.
	sed '/^  http:$/a\    full_scrape: true\n    full_scrape_interval: 1s' "deploy/compose/$n.yaml" | cat - "$hooks" >"$tmp/$n.yaml"
	printf 'store:\n  snapshot_file: /var/lib/karuta/swarms\n  snapshot_interval: 10s\n' >>"$tmp/$n.yaml"
	grep -q 'full_scrape: true' "$tmp/$n.yaml" || fail "could not turn full_scrape on in the test copy of $n.yaml"
	mkdir -p "$tmp/$n-state"
	chown 65532:65532 "$tmp/$n-state" 2>/dev/null || chmod 777 "$tmp/$n-state"
	"$karuta" config check "$tmp/$n.yaml" >/dev/null || fail "$n.yaml with $hooks does not validate"
done
chmod a+r "$tmp"/n?.yaml "$tmp/jwt.pub.pem"
chmod a+rx "$tmp"
cat >"$tmp/override.yml" <<EOF
services:
  n1:
    volumes: ["$tmp/n1.yaml:/etc/karuta/karuta.yaml:ro", "$tmp/n1-state:/var/lib/karuta"]
  n2:
    volumes: ["$tmp/n2.yaml:/etc/karuta/karuta.yaml:ro", "$tmp/n2-state:/var/lib/karuta"]
  n3:
    volumes: ["$tmp/n3.yaml:/etc/karuta/karuta.yaml:ro", "$tmp/n3-state:/var/lib/karuta", "$tmp/jwt.pub.pem:/etc/karuta/jwt.pub.pem:ro"]
EOF
say "starting the compose cluster (project $run_id; trackers on $p1 $p2 $p3, metrics on $m1 $m2 $m3)"
compose_up=1
compose up -d --no-build >/dev/null 2>&1 || { compose up -d --no-build; fail "compose up"; }

# --- 4. Smoke test ------------------------------------------------------------
ih=$(head -c 20 /dev/urandom | od -An -v -tx1 | tr -d ' \n')
token=$("$check" jwt-token "$tmp" "$ih")
say "smoke.sh"
HOST=127.0.0.1 TRACKER_PORTS="$p1 $p2 $p3" METRICS_PORTS="$m1 $m2 $m3" \
	INFO_HASH=$ih ANNOUNCE_QUERY="&jwt=$token" deploy/compose/smoke.sh

# --- 5. Prometheus and load --------------------------------------------------
mkdir -p "$tmp/prom"
sed -e 's/^\(  *scrape_interval:\).*/\1 2s/' -e 's/^\(  *evaluation_interval:\).*/\1 2s/' \
	-e "s/127.0.0.1:6881/127.0.0.1:$m1/" -e "s/127.0.0.1:6882/127.0.0.1:$m2/" -e "s/127.0.0.1:6883/127.0.0.1:$m3/" \
	deploy/prometheus/prometheus.yml >"$tmp/prom/prometheus.yml"
sed -e 's/^\(  *for:\).*/\1 10s/' deploy/prometheus/alerts.yml >"$tmp/prom/alerts.yml"
grep -q "127.0.0.1:$m3" "$tmp/prom/prometheus.yml" || fail "could not point the test copy of prometheus.yml at the test ports"
promtool check config "$tmp/prom/prometheus.yml" >/dev/null
say "starting Prometheus on 127.0.0.1:$pp"
prometheus --config.file="$tmp/prom/prometheus.yml" --storage.tsdb.path="$tmp/prom/data" \
	--web.listen-address="127.0.0.1:$pp" --log.level=warn >"$tmp/prom/log" 2>&1 &
prom_pid=$!
prom="http://127.0.0.1:$pp"
for _ in $(seq 60); do
	curl -fsS --max-time 1 "$prom/-/ready" >/dev/null 2>&1 && break
	kill -0 "$prom_pid" 2>/dev/null || { cat "$tmp/prom/log" >&2; fail "prometheus exited"; }
	sleep 0.5
done
curl -fsS --max-time 1 "$prom/-/ready" >/dev/null || fail "prometheus not ready within 30s"

# load runs `karuta bench` against the nodes for $1, in the background, and
# waits for all of it: UDP and HTTP to n1 and n2 (more than rate_limit's
# 300/s per address, so it refuses some), and a trickle of unsigned
# announces to n3, which the jwt hook refuses.
load() {
	local d=$1 pids=()
	local common=(--duration "$d" --warmup 0s --swarms 500 --peers 5000 --scrape-ratio 0.1 --timeout 2s)
	"$karuta" bench "${common[@]}" --url "udp://127.0.0.1:$p1/announce" --rate 250 >"$tmp/bench-udp-n1" 2>&1 & pids+=($!)
	"$karuta" bench "${common[@]}" --url "http://127.0.0.1:$p1/announce" --rate 150 >"$tmp/bench-http-n1" 2>&1 & pids+=($!)
	"$karuta" bench "${common[@]}" --url "udp://127.0.0.1:$p2/announce" --rate 250 >"$tmp/bench-udp-n2" 2>&1 & pids+=($!)
	"$karuta" bench "${common[@]}" --url "http://127.0.0.1:$p2/announce" --rate 150 >"$tmp/bench-http-n2" 2>&1 & pids+=($!)
	"$karuta" bench "${common[@]}" --url "udp://127.0.0.1:$p3/announce" --rate 20 >"$tmp/bench-udp-n3" 2>&1 & pids+=($!)
	local rc=0
	for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
	if [[ $rc -ne 0 ]]; then
		tail -n 5 "$tmp"/bench-* >&2
		fail "karuta bench failed"
	fi
}
say "loading the cluster for 15s"
load 15s

# A full scrape of any node lists the cluster's swarms, the smoke test's
# among them, as a bencoded files dictionary, gzipped on request.
# Retried for a few seconds: right after the load, rate_limit may refuse.
for port in "$p1" "$p2" "$p3"; do
	for try in $(seq 10); do
		hex=$(curl -fsS --max-time 20 --compressed "http://127.0.0.1:$port/scrape" | od -An -v -tx1 | tr -d ' \n')
		[[ $hex == 64353a66696c657364* ]] && break
		((try < 10)) || fail "full scrape of 127.0.0.1:$port is not a files dictionary: $(xxd -r -p <<<"${hex:0:400}")"
		sleep 1
	done
	[[ $hex == *"32303a$ih"* ]] || fail "full scrape of 127.0.0.1:$port lacks the smoke test's swarm $ih"
done
say "full scrapes list the smoke test's swarm on every node"

# --- 6. One alert end to end ---------------------------------------------------
say "stopping n2: KarutaNodeDown must fire"
compose stop -t 30 n2 >/dev/null 2>&1
"$check" alert -prom "$prom" -name KarutaNodeDown -want firing -within 60s
say "starting n2 again: KarutaNodeDown must resolve"
compose start n2 >/dev/null 2>&1
"$check" alert -prom "$prom" -name KarutaNodeDown -want inactive -within 60s
HOST=127.0.0.1 TRACKER_PORTS="$p1 $p2 $p3" METRICS_PORTS="$m1 $m2 $m3" WAIT_SECS=60 \
	INFO_HASH=$ih ANNOUNCE_QUERY="&jwt=$token" deploy/compose/smoke.sh >/dev/null ||
	fail "the cluster did not recover after n2 restarted"
# n2 wrote its swarm file when it stopped and loaded it when it started.
# Read the page whole first: grep -q stops at the match, and under
# pipefail curl's failed write to the closed pipe would fail the check.
loads=$(curl -fsS --max-time 5 "http://127.0.0.1:$m2/metrics" | grep '^karuta_store_snapshot_loads_total' || true)
grep -qx 'karuta_store_snapshot_loads_total{result="ok"} 1' <<<"$loads" ||
	fail "n2 did not load its swarm file after the restart: $loads"
say "n2 loaded the swarm file it wrote when it stopped"

# --- 7. The dashboard -------------------------------------------------------------
say "loading again for 10s, then checking every dashboard expression"
load 10s
sleep 4 # two more scrapes after the load
"$check" dashboard -prom "$prom" -file deploy/grafana/karuta-dashboard.json \
	-scrape-interval 2s -window "$((SECONDS - start))s"
