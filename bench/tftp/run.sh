#!/usr/bin/env bash
# TFTP benchmark: the shipped binary (`chainboot serve`, default config plus the TFTP root and
# listen address, `max_per_client = 1000` for the many-clients case, DHCP off) side by side
# with itself with `busy_poll = "0s"` (chainboot-nopoll), tftpd-hpa (in.tftpd -L), atftpd and
# dnsmasq's TFTP, same client (crates/tftp/examples/tftp-bench-client.rs), interleaved rounds,
# each round once quiet and once contended (a busy loop pinned to the last CPU, bench/lib.sh).
#
# Cases: a big file at blksize 512/1468/8192 x windowsize 1/16, and CLIENTS concurrent clients
# fetching undionly.kpxe (Debian's, 72 KiB). Topologies: "loopback" (server and client on lo
# inside a private network namespace, so port 69 is ours), "lan" (two namespaces joined by a
# veth pair, 198.18.0.1 <-> 198.18.0.2, with a LAN's 500 us round trip, where windowsize
# matters), "veth" (the same pair without the delay: a container or VM on this host, where a
# lock-step block costs wake-ups, not wire time) and "vm" (the veth pair with a client that
# behaves like firmware in a virtual machine on this host, GRUB or a UEFI PXE driver polling a
# virtio NIC: it spins on its socket, holding a CPU for the whole transfer, and spends
# VM_ACK_US (60) microseconds of CPU on each block before it answers). The LAN's round trip
# would be `tc qdisc add dev X root netem delay 250us` on each side, but this machine's kernel
# has no sch_netem (CONFIG_NET_SCH_NETEM unset, no modules); the script uses netem when the
# kernel has it and otherwise has the client hold each ACK 500 us (--ack-delay-us 500): for a
# lock-step or windowed transfer only the round trip per window matters, and every server gets
# exactly the same treatment.
#
# Usage: bash bench/tftp/run.sh            (needs root for namespaces; runs ~15-25 min)
#   env: ROUNDS=3 TOPOLOGIES="loopback lan" BIG_MB=64 LAN_BIG_MB=8 CLIENTS=500
#        SERVERS="chainboot chainboot-nopoll tftpd-hpa atftpd dnsmasq" CASES="big storm"
#        BLKSIZES="512 1468 8192" WINDOWSIZES="1 16" (the big-file cases)
#        CONDITIONS="quiet contended" SKIP_BUILD=1 (use the binaries as built)
#        CHAINBOOT=path (another chainboot binary) FORCE=1 (run although the machine is busy)
# The lock-step comparison (busy polling, quiet and contended), ~5 min:
#   ROUNDS=5 TOPOLOGIES=loopback BIG_MB=16 BLKSIZES=1468 WINDOWSIZES=1 CASES=big bash bench/tftp/run.sh
# Small-block lock-step next door (GRUB fetches the kernel with 1 KiB blocks, no window; 8 MiB
# is about its kernel), per block, ~5 min:
#   ROUNDS=5 TOPOLOGIES="veth vm" BIG_MB=8 BLKSIZES=1024 WINDOWSIZES=1 CASES=big bash bench/tftp/run.sh
# Every run also records the server's CPU time (its live threads' and the children it reaped;
# "-" for tftpd-hpa, whose per-transfer children the kernel reaps unaccounted as it ignores
# SIGCHLD, and for atftpd, whose per-transfer threads are gone with their time when the case
# ends) and chainboot's busy polls (waits that polled, and those the ACK came in); the summary
# gives lock-step cases per block.
# Output: bench/tftp/results/raw-<stamp>.tsv (every run) and summary-<stamp>.md (medians and
# ratios), printed at the end.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib.sh
. "$HERE/../lib.sh"
REPO=$(cd "$HERE/../.." && pwd)
ROUNDS=${ROUNDS:-3}
TOPOLOGIES=${TOPOLOGIES:-"loopback lan"}
BIG_MB=${BIG_MB:-64}
LAN_BIG_MB=${LAN_BIG_MB:-8}
CLIENTS=${CLIENTS:-500}
SERVERS=${SERVERS:-"chainboot chainboot-nopoll tftpd-hpa atftpd dnsmasq"}
CONDITIONS=${CONDITIONS:-"quiet contended"}
CASES=${CASES:-"big storm"}
BLKSIZES=${BLKSIZES:-"512 1468 8192"}
WINDOWSIZES=${WINDOWSIZES:-"1 16"}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
CACHE=$HERE/.cache
RESULTS=$HERE/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW=$RESULTS/raw-$STAMP.tsv
SUMMARY=$RESULTS/summary-$STAMP.md
NS_S=cbtftp-$$-s
NS_C=cbtftp-$$-c

die() { echo "bench/tftp: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, port 69 inside them)"
for t in in.tftpd dnsmasq ip tc python3 apt-get dpkg curl /usr/bin/time; do
  command -v "$t" >/dev/null || die "$t is missing: bash .ci/install-deps"
done

if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$REPO" && cargo build --release -q -p chainboot-tftp --example tftp-bench-client)
fi
CHAINBOOT_BIN=$(chainboot_bin)
CLIENT=$TARGET/release/examples/tftp-bench-client

# atftpd conflicts with tftpd-hpa in apt: unpack it here instead of installing it.
ATFTPD=$CACHE/atftpd/usr/sbin/atftpd
if [ ! -x "$ATFTPD" ]; then
  mkdir -p "$CACHE"
  (cd "$CACHE" && apt-get download atftpd >/dev/null && dpkg -x atftpd_*.deb atftpd)
fi

DATA=$(mktemp -d /tmp/cbtftp-bench.XXXXXX)
PIDS=()
cleanup() {
  hog_stop
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.2
  ip netns del "$NS_S" 2>/dev/null || true
  ip netns del "$NS_C" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT INT TERM

chmod 755 "$DATA"
head -c $((BIG_MB << 20)) /dev/urandom >"$DATA/big.img"
head -c $((LAN_BIG_MB << 20)) "$DATA/big.img" >"$DATA/lan.img"
# The real first stage: chainboot serves `undionly.kpxe` from its [ipxe] dir whatever the
# root holds, so every server gets the same bytes.
cp /usr/lib/ipxe/undionly.kpxe "$DATA/undionly.kpxe"
STORM_SIZE=$(stat -c %s "$DATA/undionly.kpxe")
chmod 644 "$DATA"/*
mkdir -p "$RESULTS"
LOAD_BEFORE=$(check_quiet)
export BENCH_COMMAND=${BENCH_COMMAND:-"ROUNDS=$ROUNDS TOPOLOGIES=\"$TOPOLOGIES\" BIG_MB=$BIG_MB BLKSIZES=\"$BLKSIZES\" WINDOWSIZES=\"$WINDOWSIZES\" CASES=\"$CASES\" CONDITIONS=\"$CONDITIONS\" bash bench/tftp/run.sh"}
printf 'condition\ttopology\tround\tserver\tcase\tok\tfailed\twall_s\tmb_per_s\tblksize\twindowsize\tclient_cpu_s\tserver_cpu_s\tpolls\tpolls_answered\n' >"$RAW"

setup_topology() {
  ip netns del "$NS_S" 2>/dev/null || true
  ip netns del "$NS_C" 2>/dev/null || true
  ip netns add "$NS_S"
  ip -n "$NS_S" link set lo up
  # tftpd-hpa resolves its -a address with AI_ADDRCONFIG, which fails in a namespace whose only
  # IPv4 address is 127.0.0.1; one more (never used) address on lo satisfies it.
  ip -n "$NS_S" addr add 198.18.1.1/32 dev lo
  case $1 in
    loopback)
      SERVER_IP=127.0.0.1
      CLIENT_NS=$NS_S
      RTT_ARGS=()
      ;;
    lan | veth | vm)
      ip netns add "$NS_C"
      ip -n "$NS_C" link set lo up
      ip link add cbt$$s netns "$NS_S" type veth peer name cbt$$c netns "$NS_C"
      ip -n "$NS_S" addr add 198.18.0.1/24 dev cbt$$s
      ip -n "$NS_C" addr add 198.18.0.2/24 dev cbt$$c
      ip -n "$NS_S" link set cbt$$s up
      ip -n "$NS_C" link set cbt$$c up
      if [ "$1" = veth ]; then
        RTT_ARGS=()
      elif [ "$1" = vm ]; then
        RTT_ARGS=(--spin 1 --ack-work-us "${VM_ACK_US:-60}")
      elif ip netns exec "$NS_S" tc qdisc add dev cbt$$s root netem delay 250us limit 100000 2>/dev/null; then
        ip netns exec "$NS_C" tc qdisc add dev cbt$$c root netem delay 250us limit 100000
        RTT_ARGS=()
      else
        RTT_ARGS=(--ack-delay-us 500)
        echo "  (no sch_netem in this kernel: the client holds each ACK 500 us instead)"
      fi
      SERVER_IP=198.18.0.1
      CLIENT_NS=$NS_C
      ;;
  esac
}

# The shipped binary's config: its defaults plus what this scenario needs (and /metrics readable
# without the token on the namespace's loopback, for the busy-poll counters).
chainboot_config() { # NAME EXTRA-TFTP-LINES
  rm -rf "$DATA/state-$1"
  cat >"$DATA/$1.toml" <<EOF
[server]
state_dir = "$DATA/state-$1"
[dhcp]
mode = "off"
[api]
read_requires_token = false
[tftp]
listen = "$SERVER_IP:69"
root = "$DATA"
max_per_client = 1000
$2
EOF
  echo "$DATA/$1.toml"
}

SERVER_PID=
start_server() {
  local log=$DATA/$1.log
  case $1 in
    chainboot) ip netns exec "$NS_S" "$CHAINBOOT_BIN" serve --config "$(chainboot_config chainboot "")" >"$log" 2>&1 & ;;
    chainboot-nopoll) ip netns exec "$NS_S" "$CHAINBOOT_BIN" serve \
      --config "$(chainboot_config chainboot-nopoll 'busy_poll = "0s"')" >"$log" 2>&1 & ;;
    tftpd-hpa) ip netns exec "$NS_S" in.tftpd -L -s "$DATA" -a "$SERVER_IP:69" 2>"$log" & ;;
    atftpd) ip netns exec "$NS_S" "$ATFTPD" --daemon --no-fork --port 69 --bind-address "$SERVER_IP" \
      --maxthread 1000 --logfile /dev/null "$DATA" 2>"$log" & ;;
    dnsmasq) ip netns exec "$NS_S" dnsmasq -d -p0 --conf-file=/dev/null --pid-file="$DATA/dnsmasq.pid" --enable-tftp \
      --tftp-root="$DATA" --listen-address="$SERVER_IP" --bind-interfaces --tftp-max=1000 \
      --quiet-tftp --log-facility="$log" 2>>"$log" & ;;
  esac
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  sleep 1
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$log" >&2; die "$1 did not start"; }
}

# One small transfer, not measured, before a server's first case: chainboot's first transfer
# after its start paid for the start itself (tens of milliseconds of CPU and wall time on a busy
# machine: 68 us per block instead of 8 for a 1 MiB lock-step case), which no long-running
# server does; every server gets the same.
warm_up() {
  ip netns exec "$CLIENT_NS" "$CLIENT" "$SERVER_IP:69" undionly.kpxe --blksize 1468 \
    --expect-size "$STORM_SIZE" >/dev/null 2>&1 || echo "  ($server: the warm-up transfer failed)" >&2
}

# The server's CPU time so far, in seconds: its live threads' (schedstat, nanoseconds) plus the
# children it reaped (utime + stime of waited-for children, in clock ticks).
server_cpu() {
  local pid=$1 ns=0 run x rest
  for x in /proc/"$pid"/task/*/schedstat; do
    read -r run _ <"$x" 2>/dev/null && ns=$((ns + run))
  done
  # After the command name, which may hold spaces: field 3 (state) is rest[0], 16-17 rest[13-14].
  read -r -a rest <<<"$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null)"
  awk -v ns="$ns" -v ticks=$((${rest[13]:-0} + ${rest[14]:-0})) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.4f", ns / 1e9 + ticks / hz }'
}

# chainboot's busy polls so far, "polled answered" (`[api]` on its default 127.0.0.1:8079);
# "0 0" for the other servers.
busy_polls() {
  case $1 in chainboot*) ;; *) echo "0 0"; return ;; esac
  ip netns exec "$NS_S" curl -s --max-time 2 http://127.0.0.1:8079/metrics 2>/dev/null |
    awk '/^chainboot_tftp_busy_polls_total/ { if ($1 ~ /answered/) a = $2; else s = $2 }
      END { printf "%d %d\n", a + s, a }'
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

# run_case TOPO ROUND SERVER CASE CLIENT-ARGS...
run_case() {
  local topo=$1 round=$2 server=$3 name=$4
  shift 4
  local out cpu line cpu0 scpu polls0 answered0 polls1 answered1
  out=$(mktemp)
  read -r polls0 answered0 <<<"$(busy_polls "$server")"
  cpu0=$(server_cpu "$SERVER_PID")
  if ! /usr/bin/time -f '%U %S' -o "$out.time" timeout 600 \
    ip netns exec "$CLIENT_NS" "$CLIENT" "$SERVER_IP:69" "$@" >"$out" 2>"$out.err"; then
    echo "  ($server $name: some transfers failed: $(head -c 300 "$out.err" | tr '\n' ' '))" >&2
  fi
  # A client that exits non-zero makes time(1) write a "Command exited" line first.
  cpu=$(tail -n 1 "$out.time" 2>/dev/null | awk '{print $1 + $2}')
  cpu=${cpu:-0}
  # A forking server reaps its transfer's child just after the client is done.
  sleep 0.2
  scpu=$(awk -v a="$cpu0" -v b="$(server_cpu "$SERVER_PID")" 'BEGIN { printf "%.4f", b - a }')
  case $server in tftpd-hpa | atftpd) scpu=- ;; esac
  read -r polls1 answered1 <<<"$(busy_polls "$server")"
  line=$(cat "$out")
  rm -f "$out" "$out.err" "$out.time"
  if [ -z "$line" ]; then line="ok=0 failed=all wall_s=0 mb_per_s=0 blksize=0 windowsize=0"; fi
  local ok failed wall mbps bs ws
  ok=$(sed -n 's/.*ok=\([^ ]*\).*/\1/p' <<<"$line")
  failed=$(sed -n 's/.*failed=\([^ ]*\).*/\1/p' <<<"$line")
  wall=$(sed -n 's/.*wall_s=\([^ ]*\).*/\1/p' <<<"$line")
  mbps=$(sed -n 's/.*mb_per_s=\([^ ]*\).*/\1/p' <<<"$line")
  bs=$(sed -n 's/.*blksize=\([^ ]*\).*/\1/p' <<<"$line")
  ws=$(sed -n 's/.*windowsize=\([^ ]*\).*/\1/p' <<<"$line")
  local polls=$((polls1 - polls0)) answered=$((answered1 - answered0))
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$CONDITION" "$topo" "$round" "$server" "$name" \
    "$ok" "$failed" "$wall" "$mbps" "$bs" "$ws" "$cpu" "$scpu" "$polls" "$answered" >>"$RAW"
  printf '  %-9s %-8s r%s %-16s %-16s ok=%s failed=%s wall=%ss %sMB/s (bs %s ws %s) client cpu %ss server cpu %ss polls %s (%s answered)\n' \
    "$CONDITION" "$topo" "$round" "$server" "$name" "$ok" "$failed" "$wall" "$mbps" "$bs" "$ws" "$cpu" "$scpu" "$polls" "$answered"
}

read -r -a server_list <<<"$SERVERS"
for topo in $TOPOLOGIES; do
  setup_topology "$topo"
  if [ "$topo" = lan ]; then file=lan.img; size=$((LAN_BIG_MB << 20)); else file=big.img; size=$((BIG_MB << 20)); fi
  for round in $(seq 1 "$ROUNDS"); do
   for CONDITION in $CONDITIONS; do
    if [ "$CONDITION" = contended ]; then hog_start; fi
    # Rotate the order each round so no server always runs first (cold caches) or last.
    n=${#server_list[@]}
    for i in $(seq 0 $((n - 1))); do
      server=${server_list[$(((i + round - 1) % n))]}
      start_server "$server"
      warm_up
      for bs in $BLKSIZES; do
        [[ " $CASES " == *" big "* ]] || break
        for ws in $WINDOWSIZES; do
          run_case "$topo" "$round" "$server" "big-bs$bs-ws$ws" "$file" \
            --blksize "$bs" --windowsize "$ws" --expect-size "$size" "${RTT_ARGS[@]}"
        done
      done
      [[ " $CASES " == *" storm "* ]] && run_case "$topo" "$round" "$server" "storm-$CLIENTS" undionly.kpxe \
        --blksize 1468 --clients "$CLIENTS" --expect-size "$STORM_SIZE" "${RTT_ARGS[@]}"
      stop_server
    done
    if [ "$CONDITION" = contended ]; then hog_stop; fi
   done
  done
done

python3 "$HERE/summarize.py" "$RAW" "$LOAD_BEFORE" >"$SUMMARY"
cat "$SUMMARY"
