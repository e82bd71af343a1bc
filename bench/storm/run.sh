#!/usr/bin/env bash
# Boot storm: N simulated machines (crates/stormsim) each doing firmware DHCP -> TFTP first
# stage (blksize 1468, tsize) -> iPXE DHCP -> /boot.ipxe -> /ipxe?mac=... -> kernel -> initrd,
# all powered on within SPREAD seconds, against
#   chainboot  target/release/chainboot serve (or $CHAINBOOT), the shipped binary: default config
#              (default log level, events, observers) plus DHCP server mode and the subnet,
#              the TFTP/HTTP roots and the one boot profile, alone
#   anchor     dnsmasq (DHCP + TFTP, user-class iPXE -> http URL) + nginx (static script)
# interleaved per round, each run in a fresh namespace pair (198.18.0.0/17; the pool
# 198.18.64.0/18, 16 382 addresses so that 10 000 machines fit, is routed as local in the client
# namespace so each machine uses its own leased address, and the server namespace reaches the
# pool through the client namespace's address as a gateway: one neighbour entry for all machines,
# see net_up).
# Usage: bench/storm/run.sh [N=1000] [ROUNDS=1] [KERNEL_MIB=8] [INITRD_MIB=30] [SPREAD=10]
# Per run: time-to-kernel p50/p99, failures, DHCP/TFTP retransmits, server peak RSS (VmHWM,
# summed over the server processes) and CPU (utime+stime), and CPU-s per 1000 booted machines.
# Raw JSON lines go to bench/storm/results/storm-<time>.jsonl, a time-to-kernel CDF plot (gnuplot)
# to storm-<time>.svg. Root needed. Timing is never asserted: a script.
# Knobs: STORM_MACS=random (seeded random MACs; default sequential 52:54:00:00:xx:yy),
# STORM_SIDES="chainboot" (one side only: no ratio, bench/summary/ left as it was),
# STORM_KEEP=1 (keep the work dir and logs),
# STORM_DEADLINE (s, default 600), CHAINBOOT / STORMSIM (binaries; default release builds),
# CONTENDED=1 (a busy loop pinned to the last CPU during every run, the same for both sides),
# FORCE=1 (run although the machine is busy), STORM_PERF=1 (perf record -g of the server
# processes during each run: <raw>-<side>-r<round>.perf.data and a top-of-profile .perf.txt).
# STORM_TFTP_EXTRA (TOML lines added to chainboot's [tftp], for an A/B run of one setting).
# STORM_SAMPLE=1: once a second during each run, the server's RSS, peak RSS and threads with
# the server namespace's UDP sockets (TFTP transfers) and established TCP connections (HTTP) in
# <raw>-<side>-r<round>.samples.tsv: what the memory goes with; and each thread's CPU
# (utime+stime, last seen) in <raw>-<side>-r<round>.threads.tsv, summed by thread kind in the
# summary: where the CPU goes.
# Each run's JSON line also says how the harness did ("harness": the host's neighbour-table
# overflows, UDP receive-buffer drops in each namespace, backlog drops, the simulator's own
# CPU); the summary warns when the harness lost packets. The 10 000-machine target:
#   STORM_MACS=random bash bench/storm/run.sh 10000 1 1 4 30
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../lib.sh
. "$here/../lib.sh"
CONTENDED=${CONTENDED:-0}
N=${1:-1000}; ROUNDS=${2:-1}; KMIB=${3:-8}; IMIB=${4:-30}; SPREAD=${5:-10}
DEADLINE=${STORM_DEADLINE:-600}
tdir=${CARGO_TARGET_DIR:-$repo/target}
if [ -z "${STORMSIM:-}" ] && [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$repo" && cargo build --release -q -p chainboot-stormsim)
fi
SIM=${STORMSIM:-$tdir/release/chainboot-stormsim}
CB=$(chainboot_bin)
for t in ip dnsmasq nginx; do command -v $t >/dev/null || { echo "missing $t (.ci/install-deps)" >&2; exit 1; }; done
[ -x "$SIM" ] || { echo "build the simulator first: cargo build -p chainboot-stormsim ($SIM)" >&2; exit 1; }
[ -x "$CB" ] || { echo "build chainboot first: cargo build -p chainboot ($CB)" >&2; exit 1; }
[ -f /usr/lib/ipxe/undionly.kpxe ] || { echo "missing /usr/lib/ipxe (package ipxe)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/cbstorm.XXXXXX)
S=cbstorm$$s; C=cbstorm$$c
PIDS=()
cleanup() {
  hog_stop
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  net_down
  if [ "${STORM_KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM
ulimit -n "$(ulimit -Hn)"

# A fresh namespace pair per run: nothing of one side's run (neighbour entries, sockets in
# TIME_WAIT) is left for the next.
# The kernel's neighbour (ARP) table is one table for every namespace on the host, with
# gc_thresh3 = 1024 entries by default. With each machine on its own address on the link, the
# server namespace needed an entry per machine: 10 000 machines (and the second side of a
# 1000-machine round, after the first side's ~1000 stale entries) overflowed it ("neighbor table
# overflow" in dmesg), and the kernel then dropped packets to new neighbours, including the
# 255.255.255.255 entry that every DHCP broadcast uses, the first that forced GC evicts: machines
# failed with "no Offer after 6 tries" in both namespaces, for chainboot and the anchor alike.
# Routing the pool through 198.18.0.2 makes that one entry. (A real segment with thousands of
# machines booting needs net.ipv4.neigh.default.gc_thresh3 raised on the boot server: see
# docs/install.md.)
net_up() {
  ip netns add "$S"; ip netns add "$C"
  ip -n "$S" link add vs type veth peer name vc netns "$C"
  ip -n "$S" addr add 198.18.0.1/17 dev vs
  ip -n "$C" addr add 198.18.0.2/17 dev vc
  for ns in "$S" "$C"; do ip -n "$ns" link set lo up; done
  ip -n "$S" link set vs up; ip -n "$C" link set vc up
  ip -n "$C" route add local 198.18.64.0/18 dev lo
  ip -n "$S" route add 198.18.64.0/18 via 198.18.0.2 dev vs
}
net_down() {
  ip netns del "$S" 2>/dev/null || true; ip netns del "$C" 2>/dev/null || true
}

mkdir -p "$WORK/http" "$WORK/tftp" "$WORK/nginx/tmp"
head -c $((KMIB << 20)) /dev/urandom >"$WORK/http/vmlinuz"
head -c $((IMIB << 20)) /dev/urandom >"$WORK/http/initrd.img"
# The anchor hands out the same first stages as chainboot's default config (undionly.kpxe and
# snponly.efi from /usr/lib/ipxe), so both sides move the same bytes over TFTP.
cp -L /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/snponly.efi "$WORK/tftp/"
cat >"$WORK/http/boot.ipxe" <<'S'
#!ipxe
chain --replace --autofree http://198.18.0.1/ipxe?mac=${mac:hexhyp}&platform=${platform:uristring}
S
cat >"$WORK/http/ipxe.script" <<'S'
#!ipxe
kernel http://198.18.0.1/vmlinuz initrd=initrd.img console=ttyS0
initrd http://198.18.0.1/initrd.img
boot
S

# What the scenario needs, for both sides alike: N machines new to the server at once. dnsmasq
# gets dhcp-lease-max and tftp-max above N; chainboot gets [tftp] max_transfers (default 1000:
# with 10 000 machines in 30 s more than 1000 lock-step first stages run at once, and the rest
# got "server busy") and [machines] new_burst (default 1000 new machine records at once, then 10
# a second: the rest are told to retry in 10 s) of at least N. Both defaults suit a network
# where a few racks power on together; the README's config tables say how to raise them.
BIG=$((N > 1000 ? N : 1000))
cat >"$WORK/chainboot.toml" <<EOF
[server]
interfaces = ["vs"]
advertise = "198.18.0.1"
state_dir = "$WORK/state"
[dhcp]
mode = "server"
[[dhcp.subnet]]
cidr = "198.18.0.0/17"
pools = [["198.18.64.1", "198.18.127.254"]]
router = "198.18.0.1"
lease_time = "1h"
[tftp]
listen = "198.18.0.1:69"
root = "$WORK/tftp"
max_transfers = $BIG
${STORM_TFTP_EXTRA:-}
[http]
listen = "198.18.0.1:80"
root = "$WORK/http"
[ipxe]
dir = "/usr/lib/ipxe"
[[profile]]
name = "storm"
kernel = "vmlinuz"
initrd = ["initrd.img"]
cmdline = "console=ttyS0"
[boot]
default = "storm"
[machines]
new_burst = $BIG
EOF

cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
user root;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  client_body_temp_path $WORK/nginx/tmp;
  proxy_temp_path $WORK/nginx/tmp;
  fastcgi_temp_path $WORK/nginx/tmp;
  uwsgi_temp_path $WORK/nginx/tmp;
  scgi_temp_path $WORK/nginx/tmp;
  server {
    listen 198.18.0.1:80 backlog=4096;
    root $WORK/http;
    location = /ipxe { default_type text/plain; alias $WORK/http/ipxe.script; }
  }
}
EOF
# dnsmasq as the recipe's DHCP + TFTP (the seed's user-class test), with the limits a storm
# needs raised (defaults: 1000 leases, 50 TFTP transfers) and no-ping (its 3 s ping check would
# find every pool address "in use": the client namespace answers for the whole pool).
cat >"$WORK/dnsmasq.conf" <<EOF
port=0
interface=vs
bind-interfaces
user=root
pid-file=
dhcp-leasefile=$WORK/dnsmasq.leases
dhcp-range=198.18.64.1,198.18.127.254,255.255.128.0,1h
dhcp-option=option:router,198.18.0.1
dhcp-lease-max=20000
no-ping
enable-tftp
tftp-root=$WORK/tftp
tftp-max=10000
dhcp-userclass=set:ipxe,iPXE
dhcp-match=set:efi64,option:client-arch,7
dhcp-match=set:efi64,option:client-arch,9
dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe,,198.18.0.1
dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi,,198.18.0.1
dhcp-boot=tag:ipxe,http://198.18.0.1/boot.ipxe
EOF

wait_port() { # wait_port PORT PID...: bounded (10 s)
  local port=$1 n p; shift
  for ((n = 0; n < 100; n++)); do
    ip netns exec "$S" ss -Hltn "sport = :$port" | grep -q . && return 0
    for p in "$@"; do kill -0 "$p" 2>/dev/null || { echo "server $p exited" >&2; return 1; }; done
    sleep 0.1
  done
  echo "nothing listening on :$port after 10 s" >&2; return 1
}
sample_loop() { # sample_loop OUT PID...: bounded by the run's deadline
  local out=$1 p n t0 rss hwm thr ss udp tcp rq; shift
  t0=$(date +%s.%N)
  echo -e "t_s\trss_kib\thwm_kib\tthreads\tudp_sockets\ttcp_established\ttftp_request_queue_bytes" >"$out"
  for ((n = 0; n < DEADLINE + 60; n++)); do
    rss=0; hwm=0; thr=0
    for p in "$@"; do
      [ -r "/proc/$p/status" ] || return 0
      read -r a b c < <(awk '/^VmRSS:/ {r=$2} /^VmHWM:/ {h=$2} /^Threads:/ {t=$2} END {print r, h, t}' "/proc/$p/status")
      rss=$((rss + a)); hwm=$((hwm + b)); thr=$((thr + c))
    done
    ss=$(ip netns exec "$S" ss -s 2>/dev/null)
    udp=$(awk '/^UDP/ {print $2; exit}' <<<"$ss")
    tcp=$(sed -n 's/^TCP: *[0-9]* (estab \([0-9]*\),.*/\1/p' <<<"$ss")
    rq=$(ip netns exec "$S" ss -Huln 'sport = :69' 2>/dev/null | awk '{q += $2} END {print q + 0}')
    echo -e "$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN {printf "%.1f", a - b}')\t$rss\t$hwm\t$thr\t${udp:-}\t${tcp:-}\t$rq" >>"$out"
    for p in "$@"; do
      awk -v pid="$p" '{print pid "\t" $1 "\t" $2 "\t" $14 + $15}' /proc/"$p"/task/*/stat 2>/dev/null >>"${out%.samples.tsv}.threads.raw" || true
    done
    sleep 1
  done
}
usage_of() { # usage_of PID...: "rss_kib cpu_s" summed over PIDs
  local p rss=0 cpu=0 r t
  for p in "$@"; do
    r=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status")
    t=$(awk '{print $14 + $15}' "/proc/$p/stat")
    rss=$((rss + r)); cpu=$((cpu + t))
  done
  echo "$rss $(awk -v t="$cpu" -v h="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / h}')"
}

mkdir -p "$here/results"
raw="$here/results/storm-$(date -u +%Y%m%d-%H%M%S).jsonl"
LOAD_BEFORE=$(check_quiet)
export BENCH_COMMAND=${BENCH_COMMAND:-"${STORM_MACS:+STORM_MACS=$STORM_MACS }CONTENDED=$CONTENDED bash bench/storm/run.sh $N $ROUNDS $KMIB $IMIB $SPREAD"}
echo "# storm $(date -u +%FT%TZ) N=$N rounds=$ROUNDS kernel=${KMIB}MiB initrd=${IMIB}MiB spread=${SPREAD}s nproc=$(nproc) load=$LOAD_BEFORE contended=$CONTENDED chainboot=$CB" | tee "$raw"

run_side() { # run_side SIDE ROUND
  local side=$1 round=$2 pids=() out usage before after perf_pid= perf_out harness sample_pid=
  rm -rf "$WORK/state" "$WORK/dnsmasq.leases"; mkdir -p "$WORK/state"
  net_up
  if [ "$side" = chainboot ]; then
    ip netns exec "$S" "$CB" serve --config "$WORK/chainboot.toml" >"$WORK/chainboot.log" 2>&1 &
    pids=($!)
  else
    ip netns exec "$S" nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx.log" 2>&1 &
    pids=($!)
    ip netns exec "$S" dnsmasq --keep-in-foreground --log-facility="$WORK/dnsmasq.log" --conf-file="$WORK/dnsmasq.conf" &
    pids+=($!)
  fi
  PIDS+=("${pids[@]}")
  wait_port 80 "${pids[@]}"
  sleep 0.5
  if [ "$CONTENDED" = 1 ]; then hog_start; fi
  if [ -n "${STORM_PERF:-}" ]; then
    perf_out="${raw%.jsonl}-$side-r$round.perf"
    perf record -q -g -F 999 -o "$perf_out.data" -p "$(IFS=,; echo "${pids[*]}")" 2>/dev/null &
    perf_pid=$!
  fi
  if [ -n "${STORM_SAMPLE:-}" ]; then
    sample_loop "${raw%.jsonl}-$side-r$round.samples.tsv" "${pids[@]}" &
    sample_pid=$!
  fi
  before=$(harness_counters)
  out=$(ip netns exec "$C" "$SIM" --machines "$N" --spread "$SPREAD" --deadline "$DEADLINE" \
        --iface vc --seed "$round" ${STORM_MACS:+--random-macs} --per-machine "${raw%.jsonl}-$side-r$round.machines.jsonl") || true
  after=$(harness_counters)
  hog_stop
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true
    perf report -i "$perf_out.data" --no-children --percent-limit 0.5 --stdio -g none 2>/dev/null |
      grep -v '^$' | head -80 >"$perf_out.txt" || true
  fi
  if [ -n "$sample_pid" ]; then kill "$sample_pid" 2>/dev/null || true; wait "$sample_pid" 2>/dev/null || true; fi
  usage=$(usage_of "${pids[@]}")
  harness=$(printf '{"neigh_table_fulls":%d,"backlog_drops":%d,"udp_rcvbuf_errors_client_ns":%d,"udp_rcvbuf_errors_server_ns":%d}' \
    $((${after% *} - ${before% *})) $((${after#* } - ${before#* })) \
    "$(udp_rcvbuf_errors "$C")" "$(udp_rcvbuf_errors "$S")")
  # chainboot's own account of its event log: events the writer could not keep up with are
  # dropped (counted), and those machines' timelines miss a stage.
  events=null
  if [ "$side" = chainboot ] && [ -r "$WORK/state/api.token" ]; then
    events=$(ip netns exec "$S" curl -s --max-time 5 -H "Authorization: Bearer $(cat "$WORK/state/api.token")" \
      http://127.0.0.1:8079/metrics | awk '$1 == "chainboot_events_recorded_total" {r = $2}
        $1 == "chainboot_events_dropped_total" {d = $2}
        END {if (r != "") printf "{\"recorded\":%d,\"dropped\":%d}", r, d; else printf "null"}') || events=null
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  net_down
  [ -n "$out" ] || out='{"machines":0,"failures":-1}'
  echo "{\"side\":\"$side\",\"round\":$round,\"server_peak_rss_kib\":${usage% *},\"server_cpu_s\":${usage#* },\"events\":$events,\"harness\":$harness,\"sim\":$out}" | tee -a "$raw"
}

for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then order=(chainboot anchor); else order=(anchor chainboot); fi
  [ -n "${STORM_SIDES:-}" ] && read -ra order <<<"$STORM_SIDES"
  for side in "${order[@]}"; do run_side "$side" "$r"; done
done

# Medians, the harness's health, where the CPU went, the summary table's lines and the CDF plot.
python3 "$here/summary.py" "$raw" "$CONTENDED"
