#!/usr/bin/env bash
# DHCP benchmark: full DORA exchanges per second against the shipped binary (`chainboot serve`,
# default config plus the subnet, DHCP server mode on the bench interface and the per-relay and
# new-client guards lifted, since the load generator is one relay with endless new MACs),
# kea-dhcp4 (memfile, persist=true; KEA_THREADS=2 for its multi-threaded mode), dnsmasq and ISC
# dhcpd, one after the other in the same network-namespace topology, with leases persisted by
# every server (chainboot: every lease fsynced before its ACK goes out, group commit).
#
#   server ns: veth vs 198.18.0.1/15 ---- client ns: veth vc 198.18.0.2/15, perfdhcp
#
# perfdhcp acts as a relay (giaddr 198.18.0.2), so every server answers by unicast to it. For
# each server the offered rate steps up (RATES); a step "holds" when fewer than 1% of the
# DISCOVER-OFFER and of the REQUEST-ACK exchanges are dropped and (dhcp-load) the 99th
# percentile REQUEST-to-ACK delay stays under HOLD_P99_MS (100): the generator waits a second
# for stragglers after each step, so without the delay bound a server that answers only 2/3
# of the offered rate, queueing the rest in its socket buffer, "holds" a 2 s step (it answers
# its backlog in the grace second). The result is the highest
# ACK rate (received ACKs / period) among the held steps; a server stops climbing once it
# drops more than 10%.
#
# Load generator (LOADGEN): "perfdhcp" (Kea's perfdhcp 2.2, the standard tool) or "dhcp-load"
# (crates/dhcp/examples/dhcp-load.rs: the same relayed DORA, new MAC per exchange, sendmmsg/
# recvmmsg, ~10 us of CPU per exchange). On a 2-core machine perfdhcp needs a whole core by
# about 14 000 exchanges/s and then drops packets itself, so it cannot show what a faster
# server sustains; dhcp-load prints its own CPU time to show it is not the limit.
# PIN=1 (default with dhcp-load on >= 2 CPUs) pins the server to CPU 1 and the generator to
# CPU 0: every server gets exactly one core, the capacity-per-core comparison.
#
# Pacing: dhcp-load sends the DISCOVERs due every loop turn (at most 1 ms apart, sooner when
# replies arrive), each REQUEST as soon as its OFFER is in; PERIOD seconds per step, a fresh
# server and lease file per step. CONTENDED=1 runs a busy loop pinned to the server's CPU
# during every step (bench/lib.sh), the same for every server.
#
# STORE=postgres: every lease in PostgreSQL instead of a local file, chainboot (`[store] backend
# = "postgres"`) against Kea with its PostgreSQL lease backend (`kea-admin db-init pgsql`), both
# on one throw-away cluster (initdb + pg_ctl in a temporary directory as the `postgres` user,
# default durability: fsync and synchronous_commit on) listening on 127.0.0.1 inside the server
# namespace, a fresh database per step; PostgreSQL is pinned with the server (PG_PIN, default
# the server's CPU: the whole durable path gets the one core). Each step's line then also says
# the CPU per ACKed lease of the server and of PostgreSQL (utime+stime over the step, the
# postmaster's reaped children included). SERVERS defaults to "chainboot kea" there. Smoke test:
#   STORE=postgres LOADGEN=dhcp-load PERIOD=2 RATES="50" FORCE=1 CHAINBOOT=target/debug/chainboot \
#     DHCP_LOAD=target/debug/examples/dhcp-load SKIP_BUILD=1 bash bench/dhcp/run.sh
#
# FAMILY=6: DHCPv6 instead, Solicit-Advertise-Request-Reply with a new DUID per exchange,
# chainboot (`[dhcp6] mode = "server"`, every lease committed before its Reply, the same group
# commit) against kea-dhcp6 (memfile, persist=true), SERVERS "chainboot kea" (dnsmasq and
# dhcpd are not compared on IPv6). Same namespaces with 2001:db8:1::1/64 (server) and
# 2001:db8:1::2/64 (client; documentation prefix, inside the namespaces only), pool
# 2001:db8:1::1:0 - 2001:db8:1::ffff:ffff. dhcp-load acts as a DHCPv6 relay at 2001:db8:1::2
# (Relay-Forw with that link-address, so the servers answer with Relay-Repl by unicast, as
# the DHCPv4 relay's giaddr does); perfdhcp -6 is a direct client on vc (multicast
# ff02::1:2). The columns keep the DHCPv4 names: DO = Solicit-Advertise, RA = Request-Reply,
# ack/s = Replies with an address per second. Summary lines go to
# bench/summary/dhcp6-<kea mode>-<condition>.tsv. STORE=postgres is not wired up for DHCPv6
# here (chainboot keeps DHCPv6 leases on PostgreSQL too, docs/fleet.md; this script has no
# kea-dhcp6 PostgreSQL config and no chainboot [dhcp6] on it yet). Smoke test:
#   FAMILY=6 LOADGEN=dhcp-load PERIOD=2 RATES="50 100" FORCE=1 CHAINBOOT=target/debug/chainboot \
#     DHCP_LOAD=target/debug/examples/dhcp-load SKIP_BUILD=1 bash bench/dhcp/run.sh
# The comparison that decides the DHCPv6 target (~10 min):
#   FAMILY=6 LOADGEN=dhcp-load PERIOD=5 RATES="4000 8000 12000 16000 20000 24000 28000 32000 40000" \
#     SERVERS="chainboot kea" bash bench/dhcp/run.sh
#
# Usage: sudo bench/dhcp/run.sh [--quick]     (needs root; installs the anchors if missing)
# Env: RATES="500 1000 ..." PERIOD=seconds SERVERS="chainboot kea ..." OUT=results file
# (default bench/dhcp/results-<stamp>.txt) LOADGEN=perfdhcp|dhcp-load PIN=0|1 KEA_THREADS=0|2
# CONTENDED=0|1 CHAINBOOT=path DHCP_LOAD=path SKIP_BUILD=1 FORCE=1 (run although the machine is busy)
# STORE=file|postgres PG_PIN="taskset -c N"|"" FAMILY=4|6
# The comparison that decides the target (~10 min):
#   LOADGEN=dhcp-load PERIOD=5 RATES="8000 12000 16000 20000 24000 28000 32000 40000 48000" \
#     SERVERS="chainboot kea" bash bench/dhcp/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../lib.sh
. bench/lib.sh
[ "$(id -u)" = 0 ] || { echo "bench/dhcp: must run as root (network namespaces)"; exit 1; }

RATES=${RATES:-"100 250 500 1000 1500 2000 3000 4000 6000 8000 12000"}
PERIOD=${PERIOD:-8}
if [ "${1:-}" = "--quick" ]; then RATES="500 2000"; PERIOD=3; fi
KEA_THREADS=${KEA_THREADS:-0}
STORE=${STORE:-file}
case "$STORE" in file|postgres) ;; *) echo "STORE: file or postgres" >&2; exit 2 ;; esac
FAMILY=${FAMILY:-4}
case "$FAMILY" in 4|6) ;; *) echo "FAMILY: 4 or 6" >&2; exit 2 ;; esac
if [ "$FAMILY" = 6 ] && [ "$STORE" = postgres ]; then
  echo "FAMILY=6: this script compares DHCPv6 on local lease files only (STORE=file)" >&2; exit 2
fi
OUT=${OUT:-bench/dhcp/results-$([ "$FAMILY" = 6 ] && echo v6-)$(date -u +%Y%m%dT%H%M%SZ).txt}
HOLD_P99_MS=${HOLD_P99_MS:-100}
CONTENDED=${CONTENDED:-0}

need=()
command -v perfdhcp >/dev/null || need+=(kea-admin)
command -v kea-dhcp4 >/dev/null || [ -x /usr/sbin/kea-dhcp4 ] || need+=(kea-dhcp4-server)
[ "$FAMILY" = 4 ] || [ -x /usr/sbin/kea-dhcp6 ] || need+=(kea-dhcp6-server)
[ -x /usr/sbin/dhcpd ] || need+=(isc-dhcp-server)
command -v dnsmasq >/dev/null || need+=(dnsmasq)
[ "$STORE" = postgres ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing anchors: ${need[*]}"
  # Keep the packages' init scripts from starting daemons on the host.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
  rm -f /usr/sbin/policy-rc.d
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p chainboot-dhcp --example dhcp-load
CHAINBOOT_BIN=$(chainboot_bin)
DHCP_LOAD=${DHCP_LOAD:-$CARGO_TARGET_DIR/release/examples/dhcp-load}
LOADGEN=${LOADGEN:-perfdhcp}
if [ "$LOADGEN" = dhcp-load ] && [ "$(nproc)" -ge 2 ]; then PIN=${PIN:-1}; else PIN=${PIN:-0}; fi
SRV_PIN=(); GEN_PIN=()
if [ "$PIN" = 1 ]; then SRV_PIN=(taskset -c 1); GEN_PIN=(taskset -c 0); fi
# Kea multi-threaded gets the same CPUs as everyone: both, unpinned, when it runs 2 threads.
if [ "$KEA_THREADS" -gt 0 ]; then SRV_PIN=(); GEN_PIN=(); fi
read -ra PG_PIN <<<"${PG_PIN-${SRV_PIN[*]}}"

ID="cbbench$$"
S=${ID}s
C=${ID}c
WORK=$(mktemp -d /tmp/cb-dhcp-bench.XXXXXX)
SRV_PID=""
PGDIR=""
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
cleanup() {
  hog_stop
  if [ -n "$PGDIR" ] && [ -f "$PGDIR/data/postmaster.pid" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  [ -n "$PGDIR" ] && rm -rf "$PGDIR"
  [ -n "$SRV_PID" ] && kill -9 "$SRV_PID" 2>/dev/null || true
  ip netns pids "$S" 2>/dev/null | while read -r p; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$S" 2>/dev/null || true
  ip netns del "$C" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$S"; ip netns add "$C"
SRV6=2001:db8:1::1
CLI6=2001:db8:1::2
if [ "$FAMILY" = 6 ]; then
  # No duplicate address detection inside the namespaces: the link-local addresses are usable
  # at once (perfdhcp -6 sends from vc's).
  for ns in "$S" "$C"; do ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0; done
fi
ip -n "$S" link add vs type veth peer name vc netns "$C"
ip -n "$S" addr add 198.18.0.1/15 dev vs
ip -n "$C" addr add 198.18.0.2/15 dev vc
if [ "$FAMILY" = 6 ]; then
  ip -n "$S" -6 addr add "$SRV6/64" dev vs nodad
  ip -n "$C" -6 addr add "$CLI6/64" dev vc nodad
fi
for ns in "$S" "$C"; do ip -n "$ns" link set lo up; done
ip -n "$S" link set vs up; ip -n "$C" link set vc up

POOL_LO=198.18.1.0
POOL_HI=198.19.254.254
POOL6_LO=2001:db8:1::1:0
POOL6_HI=2001:db8:1::ffff:ffff

# STORE=postgres: the throw-away cluster, inside the server namespace (127.0.0.1:5432 there,
# and its unix socket), pinned with the server.
PG_PASSWORD=throwaway-bench-password
if [ "$STORE" = postgres ]; then
  [ -x "$PGBIN/initdb" ] || { echo "PostgreSQL server binaries missing (package postgresql)" >&2; exit 1; }
  PGDIR=$(mktemp -d /tmp/cb-dhcp-bench-pg.XXXXXX)
  chown postgres: "$PGDIR"
  echo "$PG_PASSWORD" >"$PGDIR/pwfile"; chown postgres: "$PGDIR/pwfile"
  runuser -u postgres -- "$PGBIN/initdb" -D "$PGDIR/data" -U chainboot --pwfile "$PGDIR/pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 >/dev/null
  ip netns exec "$S" "${PG_PIN[@]}" runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" \
    -o "-k $PGDIR -p 5432 -c listen_addresses=127.0.0.1 -c max_connections=100" -w start >/dev/null
  install -m 600 /dev/null "$WORK/db.password"; echo "$PG_PASSWORD" >"$WORK/db.password"
fi
PG_STEP=0
DB=""
# A fresh database for the next server start, named in DB.
fresh_db() {
  PG_STEP=$((PG_STEP + 1))
  DB="bench$PG_STEP"
  runuser -u postgres -- "$PGBIN/psql" -h "$PGDIR" -p 5432 -U chainboot -d postgres -v ON_ERROR_STOP=1 \
    -qAtc "CREATE DATABASE $DB" >/dev/null
}
# utime+stime of the processes, in clock ticks.
ticks_of() {
  local p t=0
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
# PostgreSQL's CPU so far: the postmaster, its reaped children (backends that ended) and its
# live children, in clock ticks.
pg_ticks() {
  local pm
  pm=$(head -1 "$PGDIR/data/postmaster.pid")
  echo $(($(awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat") + $(ticks_of $(pgrep -P "$pm" || true))))
}

# The shipped binary: its defaults plus the scenario's subnet and interface, and the guards a
# single relay with endless new MACs would trip.
start_chainboot() {
  rm -rf "$WORK/chainboot-state"
  local store=""
  if [ "$STORE" = postgres ]; then
    fresh_db
    store="[store]
backend = \"postgres\"
url = \"postgres://chainboot@127.0.0.1:5432/$DB\"
password_file = \"$WORK/db.password\""
  fi
  if [ "$FAMILY" = 6 ]; then
    cat > "$WORK/chainboot.toml" <<CFG
[server]
interfaces = ["vs"]
state_dir = "$WORK/chainboot-state"

[dhcp6]
mode = "server"
interfaces = ["vs"]
valid_lifetime = "1h"
limits = { per_relay_rate = 1000000.0, per_relay_burst = 1000000.0, new_client_share = 1.0 }
[[dhcp6.subnet]]
prefix = "2001:db8:1::/64"
pools = [["$POOL6_LO", "$POOL6_HI"]]
dns = ["$SRV6"]
CFG
  else
  cat > "$WORK/chainboot.toml" <<CFG
[server]
interfaces = ["vs"]
state_dir = "$WORK/chainboot-state"
$store
[dhcp]
mode = "server"
lease_time = "1h"
limits = { per_relay_rate = 1000000.0, per_relay_burst = 1000000.0, new_client_share = 1.0 }
[[dhcp.subnet]]
cidr = "198.18.0.0/15"
pools = [["$POOL_LO", "$POOL_HI"]]
router = "198.18.0.1"
dns = ["198.18.0.1"]
CFG
  fi
  ip netns exec "$S" "${SRV_PIN[@]}" "$CHAINBOOT_BIN" serve --config "$WORK/chainboot.toml" > "$WORK/chainboot.out" 2>&1 &
  SRV_PID=$!
}

start_kea() {
  rm -f "$WORK/kea-leases.csv"
  local leases="{ \"type\": \"memfile\", \"persist\": true, \"name\": \"$WORK/kea-leases.csv\", \"lfc-interval\": 0 }"
  if [ "$STORE" = postgres ]; then
    fresh_db
    ip netns exec "$S" kea-admin db-init pgsql -u chainboot -p "$PG_PASSWORD" -n "$DB" -h 127.0.0.1 -P 5432 \
      > "$WORK/kea-admin.out" 2>&1 || { echo "kea-admin db-init pgsql failed:" >&2; cat "$WORK/kea-admin.out" >&2; exit 1; }
    leases="{ \"type\": \"postgresql\", \"name\": \"$DB\", \"user\": \"chainboot\", \"password\": \"$PG_PASSWORD\", \"host\": \"127.0.0.1\", \"port\": 5432 }"
  fi
  if [ "$FAMILY" = 6 ]; then start_kea6 "$leases"; return; fi
  cat > "$WORK/kea.json" <<CFG
{ "Dhcp4": {
  "interfaces-config": { "interfaces": [ "vs" ], "dhcp-socket-type": "udp" },
  "lease-database": $leases,
  "valid-lifetime": 3600,
  "multi-threading": { "enable-multi-threading": $([ "$KEA_THREADS" -gt 0 ] && echo true || echo false),
                       "thread-pool-size": $((KEA_THREADS > 0 ? KEA_THREADS : 1)), "packet-queue-size": 256 },
  "subnet4": [ { "subnet": "198.18.0.0/15", "pools": [ { "pool": "$POOL_LO - $POOL_HI" } ],
                 "option-data": [ { "name": "routers", "data": "198.18.0.1" },
                                  { "name": "domain-name-servers", "data": "198.18.0.1" } ] } ],
  "loggers": [ { "name": "kea-dhcp4", "severity": "ERROR", "output_options": [ { "output": "stderr" } ] } ]
} }
CFG
  KEA_PIDFILE_DIR=$WORK KEA_LOCKFILE_DIR=$WORK ip netns exec "$S" "${SRV_PIN[@]}" /usr/sbin/kea-dhcp4 -c "$WORK/kea.json" > "$WORK/kea.out" 2>&1 &
  SRV_PID=$!
}

# kea-dhcp6 on vs's link-local address, ff02::1:2 and (for the relay's unicast) SRV6.
start_kea6() {
  cat > "$WORK/kea6.json" <<CFG
{ "Dhcp6": {
  "interfaces-config": { "interfaces": [ "vs/$SRV6" ] },
  "server-id": { "type": "EN", "enterprise-id": 2495, "identifier": "6362", "persist": false },
  "lease-database": $1,
  "preferred-lifetime": 2250,
  "valid-lifetime": 3600,
  "multi-threading": { "enable-multi-threading": $([ "$KEA_THREADS" -gt 0 ] && echo true || echo false),
                       "thread-pool-size": $((KEA_THREADS > 0 ? KEA_THREADS : 1)), "packet-queue-size": 256 },
  "subnet6": [ { "subnet": "2001:db8:1::/64", "interface": "vs",
                 "pools": [ { "pool": "$POOL6_LO - $POOL6_HI" } ],
                 "option-data": [ { "name": "dns-servers", "data": "$SRV6" } ] } ],
  "loggers": [ { "name": "kea-dhcp6", "severity": "ERROR", "output_options": [ { "output": "stderr" } ] } ]
} }
CFG
  KEA_PIDFILE_DIR=$WORK KEA_LOCKFILE_DIR=$WORK ip netns exec "$S" "${SRV_PIN[@]}" /usr/sbin/kea-dhcp6 -c "$WORK/kea6.json" > "$WORK/kea.out" 2>&1 &
  SRV_PID=$!
}

start_dnsmasq() {
  rm -f "$WORK/dnsmasq.leases"
  ip netns exec "$S" "${SRV_PIN[@]}" dnsmasq --no-daemon --port=0 --user=root --bind-interfaces --interface=vs \
    --conf-file=/dev/null --no-ping --dhcp-lease-max=200000 --dhcp-authoritative \
    --dhcp-range=$POOL_LO,$POOL_HI,255.254.0.0,1h --dhcp-option=3,198.18.0.1 --dhcp-option=6,198.18.0.1 \
    --dhcp-leasefile="$WORK/dnsmasq.leases" --pid-file="$WORK/dnsmasq.pid" > "$WORK/dnsmasq.out" 2>&1 &
  SRV_PID=$!
}

start_dhcpd() {
  : > "$WORK/dhcpd.leases"
  cat > "$WORK/dhcpd.conf" <<CFG
authoritative;
ping-check false;
default-lease-time 3600;
max-lease-time 3600;
subnet 198.18.0.0 netmask 255.254.0.0 {
  range $POOL_LO $POOL_HI;
  option routers 198.18.0.1;
  option domain-name-servers 198.18.0.1;
}
CFG
  ip netns exec "$S" "${SRV_PIN[@]}" /usr/sbin/dhcpd -4 -f -q -cf "$WORK/dhcpd.conf" -lf "$WORK/dhcpd.leases" \
    -pf "$WORK/dhcpd.pid" vs > "$WORK/dhcpd.out" 2>&1 &
  SRV_PID=$!
}

stop_server() {
  if [ "$server" = chainboot ] && [ -n "$SRV_PID" ]; then
    # The group-commit counters, from the management listener before the server goes.
    ip netns exec "$S" curl -s --max-time 2 -H "Authorization: Bearer $(cat "$WORK/chainboot-state/api.token" 2>/dev/null)" \
      http://127.0.0.1:8079/metrics > "$WORK/chainboot.metrics" 2>/dev/null || true
  fi
  if [ -n "$SRV_PID" ]; then
    kill -TERM "$SRV_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
  fi
  SRV_PID=""
}

# Waits (at most 30 s) until the server answers a DISCOVER: ISC dhcpd, for one, builds its
# whole pool in memory before it answers.
wait_ready() {
  local i out
  if [ "$FAMILY" = 6 ]; then wait_ready6 "$1"; return; fi
  for i in $(seq 30); do
    # perfdhcp exits non-zero when anything was dropped: capture first (pipefail).
    out=$(timeout 5 ip netns exec "$C" perfdhcp -4 -l vc -r 1 -n 1 -R 1 -W 500000 \
          -b "mac=00:0e:00:00:00:$(printf '%02x' "$i")" 198.18.0.1 2>&1 || true)
    if grep -q '^received packets: [1-9]' <<<"$out"; then return 0; fi
    sleep 0.5
  done
  echo "warning: $1 did not answer within 30 s" >&2
}

# The same for DHCPv6: one Solicit-Advertise-Request-Reply of perfdhcp -6 on vc.
wait_ready6() {
  local i out
  for i in $(seq 30); do
    out=$(timeout 5 ip netns exec "$C" perfdhcp -6 -l vc -r 1 -n 1 -R 1 -W 500000 \
          -b "duid=00030001000e000000$(printf '%02x' "$i")" 2>&1 || true)
    if grep -q '^received packets: [1-9]' <<<"$out"; then return 0; fi
    sleep 0.5
  done
  echo "warning: $1 did not answer within 30 s" >&2
}

# chainboot's group commit: leases written per fsync in the last run (from its counters).
commit_factor() {
  local m=chainboot_dhcp
  [ "$FAMILY" = 6 ] && m=chainboot_dhcp6
  awk -v b_name="${m}_commit_batches_total" -v l_name="${m}_committed_leases_total" \
      '$1 == b_name { b = $2 } $1 == l_name { l = $2 }
       END { if (b > 0) printf "%d leases in %d fsyncs (%.1f per fsync)", l, b, l / b; else printf "no commits" }' \
    "$WORK/chainboot.metrics"
}

# One step with dhcp-load: same output as the perfdhcp step, plus the generator's CPU seconds.
step_dhcp_load() {
  local out
  local server=198.18.0.1 relay=198.18.0.2
  [ "$FAMILY" = 6 ] && server=$SRV6 relay=$CLI6
  out=$(timeout $((PERIOD + 20)) ip netns exec "$C" "${GEN_PIN[@]}" "$DHCP_LOAD" "$server" "$relay" \
        --rate "$1" --seconds "$PERIOD" --mac-prefix "$(printf '%04x' $((RANDOM % 65536)))" 2>&1 || true)
  echo "$out" > "$WORK/dhcp-load-last.txt"
  awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
       END { if (v["acks_per_s"] == "") print "0 100 100 - - -";
             else printf "%s %s %s %s %s %s\n", v["acks_per_s"], v["do_drop_pct"], v["ra_drop_pct"], v["ra_avg_ms"], v["cpu_s"], v["ra_p99_ms"] }' <<<"$out"
}

# One perfdhcp step: prints "<ack/s> <DO drop %> <RA drop %> <avg RA delay ms>".
step() {
  [ "$LOADGEN" = dhcp-load ] && { step_dhcp_load "$1"; return; }
  local rate=$1 clients=$(( $1 * PERIOD + 1000 ))
  local out
  if [ "$FAMILY" = 6 ]; then
    # A direct client on vc (multicast to ff02::1:2), a new DUID per exchange.
    out=$(timeout $((PERIOD + 20)) ip netns exec "$C" perfdhcp -6 -l vc -r "$rate" -R "$clients" \
          -p "$PERIOD" -W 1000000 -b "duid=00030001000c$(printf '%02x' $((RANDOM % 256)))000000" 2>&1 || true)
  else
  out=$(timeout $((PERIOD + 20)) ip netns exec "$C" perfdhcp -4 -l vc -r "$rate" -R "$clients" \
        -p "$PERIOD" -W 1000000 -b "mac=00:0c:$(printf '%02x' $((RANDOM % 256))):00:00:00" 198.18.0.1 2>&1 || true)
  fi
  echo "$out" > "$WORK/perfdhcp-last.txt"
  echo "$out" | awk -v period="$PERIOD" '
    /Statistics for: (DISCOVER-OFFER|SOLICIT-ADVERTISE)/ { sec = "do" }
    /Statistics for: (REQUEST-ACK|REQUEST-REPLY)/ { sec = "ra" }
    /^sent packets:/ { sent[sec] = $3 }
    /^received packets:/ { recv[sec] = $3 }
    /^avg delay:/ { delay[sec] = $3 }
    END {
      dod = sent["do"] ? 100 * (sent["do"] - recv["do"]) / sent["do"] : 100
      rad = sent["ra"] ? 100 * (sent["ra"] - recv["ra"]) / sent["ra"] : 100
      printf "%.0f %.2f %.2f %s\n", recv["ra"] / period, dod, rad, (delay["ra"] == "" ? "-" : delay["ra"])
    }'
}

LOAD_BEFORE=$(check_quiet)
[ "$FAMILY" = 6 ] && SERVERS=${SERVERS:-"chainboot kea"}
export BENCH_COMMAND=${BENCH_COMMAND:-"FAMILY=$FAMILY STORE=$STORE LOADGEN=$LOADGEN PERIOD=$PERIOD RATES=\"$RATES\" SERVERS=\"${SERVERS:-chainboot kea dnsmasq dhcpd}\" KEA_THREADS=$KEA_THREADS CONTENDED=$CONTENDED bash bench/dhcp/run.sh"}
declare -A BEST SATURATED
if [ "$STORE" = postgres ]; then SERVERS=${SERVERS:-"chainboot kea"}; fi
SERVERS=${SERVERS:-"chainboot kea dnsmasq dhcpd"}
for s in $SERVERS; do
  if [ "$FAMILY" = 6 ] && [ "$s" != chainboot ] && [ "$s" != kea ]; then
    echo "FAMILY=6: only chainboot and kea are compared on DHCPv6 (SERVERS=\"$SERVERS\")" >&2; exit 2
  fi
  if [ "$STORE" = postgres ] && [ "$s" != chainboot ] && [ "$s" != kea ]; then
    echo "STORE=postgres: only chainboot and kea keep leases in PostgreSQL (SERVERS=\"$SERVERS\")" >&2; exit 2
  fi
done
{
  what="DHCP DORA"
  [ "$FAMILY" = 6 ] && what="DHCPv6 Solicit-Advertise-Request-Reply"
  echo "# $what benchmark $(date -u +%FT%TZ), load generator $LOADGEN (perfdhcp $(perfdhcp -v 2>&1 | head -1)), pinned $PIN, period ${PERIOD}s, kea threads $KEA_THREADS, contended $CONTENDED, store $STORE${PGDIR:+ ($("$PGBIN/postgres" -V), pinned ${PG_PIN[*]:-no})}, load $LOAD_BEFORE"
  echo "# chainboot: $CHAINBOOT_BIN serve, config: default + subnet, interfaces, lifted relay/new-client guards"
  echo "# server rate ack/s DO-drop% RA-drop% RA-avg-ms held"
} > "$OUT"
for s in $SERVERS; do BEST[$s]=0; SATURATED[$s]=no; done
# A step needs a free address for every exchange: a rate the IPv4 pool cannot feed for PERIOD
# seconds would "fail" on the pool (every server's DISCOVERs go unanswered once it is used
# up), not on the server. Such steps are not run; a shorter PERIOD reaches higher rates.
POOL4_SIZE=130559 # POOL_LO to POOL_HI
if [ "$FAMILY" = 4 ]; then
  for rate in $RATES; do
    if [ $((rate * PERIOD)) -gt "$POOL4_SIZE" ]; then
      echo "# rate $rate for ${PERIOD}s needs more than the pool's $POOL4_SIZE addresses: not run (shorten PERIOD)" | tee -a "$OUT"
    fi
  done
fi
# Rates outer, servers inner: on a shared machine the background load drifts, and this way
# every server meets each rate at about the same time (a fresh server and lease file each).
for rate in $RATES; do
  [ "$FAMILY" = 4 ] && [ $((rate * PERIOD)) -gt "$POOL4_SIZE" ] && continue
  for server in $SERVERS; do
    [ "${SATURATED[$server]}" = no ] || continue
    "start_$server"
    wait_ready "$server"
    [ "$CONTENDED" = 1 ] && hog_start
    srv0=$(ticks_of "$SRV_PID"); pg0=0
    [ "$STORE" = postgres ] && pg0=$(pg_ticks)
    read -r acks dod rad delay gencpu p99 < <(step "$rate")
    hog_stop
    srv_ticks=$(($(ticks_of "$SRV_PID") - srv0)); pg_used=0
    [ "$STORE" = postgres ] && pg_used=$(($(pg_ticks) - pg0))
    stop_server
    held=no
    if awk -v a="$dod" -v b="$rad" -v p="${p99:--}" -v max="$HOLD_P99_MS" \
      'BEGIN { exit !(a < 1 && b < 1 && (p == "-" || p + 0 <= max)) }'; then
      held=yes
      [ "$acks" -gt "${BEST[$server]}" ] && BEST[$server]=$acks
    fi
    extra=""
    [ -n "${gencpu:-}" ] && extra="  # generator cpu ${gencpu}s, RA p99 ${p99:-?} ms"
    [ "$server" = chainboot ] && extra="$extra  # $(commit_factor)"
    if [ "$STORE" = postgres ]; then
      extra="$extra  # CPU per lease: $(awk -v s="$srv_ticks" -v p="$pg_used" -v a="$acks" -v t="$PERIOD" -v h="$(getconf CLK_TCK)" -v n="$server" \
        'BEGIN { l = a * t; if (l > 0) printf "%s %.0f us, postgres %.0f us", n, s / h / l * 1e6, p / h / l * 1e6; else printf "no leases" }')"
    fi
    printf '%-9s %6s %7s %6s %6s %6s %s%s\n' "$server" "$rate" "$acks" "$dod" "$rad" "$delay" "$held" "$extra" | tee -a "$OUT"
    # Stop climbing once a server clearly saturates (a missed step alone may be noise).
    if awk -v a="$dod" -v b="$rad" 'BEGIN { exit !(a > 10 || b > 10) }'; then SATURATED[$server]=yes; fi
  done
done
{
  echo "# best sustained ACK/s at < 1% drops:"
  for s in $SERVERS; do echo "best $s ${BEST[$s]}"; done
  for s in $SERVERS; do
    [ "$s" = chainboot ] && continue
    awk -v c="${BEST[chainboot]:-0}" -v o="${BEST[$s]:-0}" -v n="$s" 'BEGIN { if (o > 0) printf "ratio chainboot/%s %.2f\n", n, c / o; else printf "ratio chainboot/%s n/a (%s sustained nothing)\n", n, n }'
  done
} | tee -a "$OUT"
# A run forced on a busy machine gets its plot but no line in the summary table.
if awk -v l="$LOAD_BEFORE" 'BEGIN { exit !(l >= 1.5) }'; then
  export BENCH_NO_SUMMARY="load average $LOAD_BEFORE at the start"
fi
python3 bench/dhcp/summarize.py "$OUT" "$LOADGEN" "$KEA_THREADS" "$CONTENDED" "$STORE" "$FAMILY"
