#!/usr/bin/env bash
# Fleet boot storm: the storm simulator (crates/stormsim) against
#   sqlite1    one chainboot on its embedded SQLite store (the single-server baseline)
#   pg2        two chainboot servers on one segment sharing one PostgreSQL database
#   pg2-kill   the same, with one of the two killed (kill -9) KILL_AT seconds into the storm
# in namespaces made once for all runs: a client namespace holding the bridge (198.18.0.100/17,
# the pool 198.18.64.0/18 routed as local so each machine uses its own address) and one
# namespace per server (198.18.0.1, 198.18.0.2) joined to it by veth, each reaching the pool
# through 198.18.0.100 as a gateway (as bench/storm does, and for the same reason: see "The
# segment" below). PostgreSQL is a throw-away cluster
# (initdb + pg_ctl in a temporary directory, run as the `postgres` user, default durability:
# fsync and synchronous_commit on), reached through its unix socket, a fresh database per run.
# Every machine may boot up to BOOTS times (a boot that a killed server broke powers on again,
# as firmware retries); its time-to-kernel counts from its first power-on.
#
# Reports per side (median over rounds): time-to-kernel p50/p99, failures, reboots, DHCP
# retransmits, chainboot CPU (the servers alive at the end) and PostgreSQL CPU, and how the
# harness did (neighbour-table overflows, backlog and UDP receive-buffer drops); and the ratios
# the fleet targets: pg2 / sqlite1 p99, and pg2-kill / pg2 p99 (target: at most 1.5).
# Timing is never asserted: a script. Root needed.
#
# Usage: bench/fleet/run.sh [N=1000] [ROUNDS=1] [KERNEL_MIB=8] [INITRD_MIB=30] [SPREAD=10]
# Env: KILL_AT (s, default 5), BOOTS (default 4), SIDES="sqlite1 pg2 pg2-kill",
# STORM_DEADLINE (s, default 600), CHAINBOOT / STORMSIM (binaries; default release builds),
# SKIP_BUILD=1, FORCE=1 (run although the machine is busy), KEEP=1 (keep the work dir).
# Smoke test (seconds, numbers meaningless):
#   FORCE=1 KILL_AT=1 CHAINBOOT=target/debug/chainboot STORMSIM=target/debug/chainboot-stormsim \
#     bash bench/fleet/run.sh 20 1 1 1 3
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../lib.sh
. "$here/../lib.sh"
[ "$(id -u)" = 0 ] || { echo "bench/fleet: must run as root (network namespaces)" >&2; exit 1; }
N=${1:-1000}; ROUNDS=${2:-1}; KMIB=${3:-8}; IMIB=${4:-30}; SPREAD=${5:-10}
DEADLINE=${STORM_DEADLINE:-600}
KILL_AT=${KILL_AT:-5}
BOOTS=${BOOTS:-4}
SIDES=${SIDES:-"sqlite1 pg2 pg2-kill"}
tdir=${CARGO_TARGET_DIR:-$repo/target}
if [ -z "${STORMSIM:-}" ] && [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$repo" && cargo build --release -q -p chainboot-stormsim)
fi
SIM=${STORMSIM:-$tdir/release/chainboot-stormsim}
CB=$(chainboot_bin)
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
for t in ip runuser python3; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done
[ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] || { echo "missing PostgreSQL server binaries (package postgresql, .ci/install-deps)" >&2; exit 1; }
[ -x "$SIM" ] || { echo "build the simulator first: cargo build -p chainboot-stormsim ($SIM)" >&2; exit 1; }
[ -x "$CB" ] || { echo "build chainboot first: cargo build -p chainboot ($CB)" >&2; exit 1; }
[ -f /usr/lib/ipxe/undionly.kpxe ] || { echo "missing /usr/lib/ipxe (package ipxe)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/cbfleet.XXXXXX)
# The cluster's directory must be the postgres user's; /tmp lets it through.
PGDIR=$(mktemp -d /tmp/cbfleet-pg.XXXXXX)
chown postgres: "$PGDIR"
PGPORT=5432
ID=cbfl$$
C=${ID}c
PIDS=()
KILLER=""
cleanup() {
  [ -n "$KILLER" ] && kill "$KILLER" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -f "$PGDIR/data/postmaster.pid" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  for ns in "$C" "${ID}s0" "${ID}s1"; do ip netns del "$ns" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK $PGDIR" >&2; else rm -rf "$WORK" "$PGDIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)"

# The segment: the clients' bridge, and a namespace per server on it. The host's neighbour
# (ARP) table is one for every namespace (gc_thresh3 = 1024 entries by default): with each
# machine on its own address on the link, every server namespace would need an entry per
# machine, and beyond ~1000 machines the table overflows and the kernel drops packets to new
# neighbours (the 255.255.255.255 entry every DHCP broadcast uses first), so machines fail for
# the harness's sake (bench/README.md, "Storm"). Routing the pool through the client
# namespace's address makes that one entry per server.
ip netns add "$C"
ip -n "$C" link set lo up
ip -n "$C" link add br0 type bridge forward_delay 0
ip -n "$C" addr add 198.18.0.100/17 dev br0
ip -n "$C" link set br0 up
ip -n "$C" route add local 198.18.64.0/18 dev lo
for i in 0 1; do
  s=${ID}s$i
  ip netns add "$s"
  ip -n "$s" link add vs type veth peer name "p$i" netns "$C"
  ip -n "$s" addr add "198.18.0.$((i + 1))/17" dev vs
  ip -n "$s" link set vs up; ip -n "$s" link set lo up
  ip -n "$C" link set "p$i" master br0; ip -n "$C" link set "p$i" up
  ip -n "$s" route add 198.18.64.0/18 via 198.18.0.100 dev vs
done

# The cluster: unix socket only (every namespace sees the file), password auth not needed on it.
echo "throwaway-bench-password" >"$PGDIR/pwfile"; chown postgres: "$PGDIR/pwfile"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDIR/data" -U chainboot --pwfile "$PGDIR/pwfile" \
  --auth-local=trust --auth-host=scram-sha-256 -E UTF8 >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" \
  -o "-k $PGDIR -p $PGPORT -c listen_addresses='' -c max_connections=200" -w start >/dev/null
psql_do() { runuser -u postgres -- "$PGBIN/psql" -h "$PGDIR" -p "$PGPORT" -U chainboot -d postgres -v ON_ERROR_STOP=1 -Atc "$1"; }
install -m 600 /dev/null "$WORK/db.password"; echo "throwaway-bench-password" >"$WORK/db.password"

mkdir -p "$WORK/http"
head -c $((KMIB << 20)) /dev/urandom >"$WORK/http/vmlinuz"
head -c $((IMIB << 20)) /dev/urandom >"$WORK/http/initrd.img"

# config I STORE_SECTION: server I's config (the shipped defaults plus the scenario).
config() {
  cat <<EOF
[server]
interfaces = ["vs"]
advertise = "198.18.0.$(($1 + 1))"
state_dir = "$WORK/state$1"
$2
[dhcp]
mode = "server"
[[dhcp.subnet]]
cidr = "198.18.0.0/17"
pools = [["198.18.64.1", "198.18.127.254"]]
router = "198.18.0.1"
lease_time = "1h"
[tftp]
listen = "198.18.0.$(($1 + 1)):69"
[http]
listen = "198.18.0.$(($1 + 1)):80"
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
EOF
}

cpu_of() { # cpu_of PID...: utime+stime in clock ticks, summed
  local p t=0
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
pg_cpu() { # PostgreSQL's CPU so far: the postmaster, its reaped children and its live ones
  local pm t
  pm=$(head -1 "$PGDIR/data/postmaster.pid")
  t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat")
  t=$((t + $(cpu_of $(pgrep -P "$pm" || true))))
  echo "$t"
}
ticks_s() { awk -v t="$1" -v h="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / h}'; }

# wait_ready LOG PID [WANT]: the server logged readiness (and WANT), bounded (60 s).
wait_ready() {
  local n
  for ((n = 0; n < 600; n++)); do
    if grep -q "ready: SIGHUP" "$1" && { [ -z "${3:-}" ] || grep -qF "$3" "$1"; }; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "server exited:" >&2; cat "$1" >&2; return 1; }
    sleep 0.1
  done
  echo "server not ready after 60 s:" >&2; cat "$1" >&2; return 1
}

mkdir -p "$here/results"
raw="$here/results/fleet-$(date -u +%Y%m%d-%H%M%S).jsonl"
LOAD_BEFORE=$(check_quiet)
echo "# fleet storm $(date -u +%FT%TZ) N=$N rounds=$ROUNDS kernel=${KMIB}MiB initrd=${IMIB}MiB spread=${SPREAD}s kill_at=${KILL_AT}s boots=$BOOTS nproc=$(nproc) load=$LOAD_BEFORE chainboot=$CB postgres=$PGBIN" | tee "$raw"

run_side() { # run_side SIDE ROUND
  local side=$1 round=$2 n pids=() logs=() out store db pg0 pg_used cb_cpu want="" before after harness rcv0=() rcv1=() i ns
  rm -rf "$WORK"/state*
  if [ "$side" = sqlite1 ]; then
    n=1; store=""
  else
    n=2; db="r${round}${side//-/_}"
    psql_do "CREATE DATABASE $db" >/dev/null
    store=$(printf '[store]\nbackend = "postgres"\nurl = "host=%s port=%s user=chainboot dbname=%s"\npassword_file = "%s"' \
      "$PGDIR" "$PGPORT" "$db" "$WORK/db.password")
    want='live=["pxe-0", "pxe-1"]'
  fi
  pg0=$(pg_cpu)
  for ((i = 0; i < n; i++)); do
    config "$i" "${store:+$store
server_name = \"pxe-$i\"}" >"$WORK/chainboot$i.toml"
    ip netns exec "${ID}s$i" "$CB" --log-level info serve --config "$WORK/chainboot$i.toml" >"$WORK/chainboot$i.log" 2>&1 &
    pids+=($!); logs+=("$WORK/chainboot$i.log")
  done
  PIDS+=("${pids[@]}")
  for ((i = 0; i < n; i++)); do wait_ready "${logs[$i]}" "${pids[$i]}" "$want"; done
  if [ "$side" = pg2-kill ]; then
    (sleep "$KILL_AT"; kill -9 "${pids[1]}" 2>/dev/null) &
    KILLER=$!
  fi
  before=$(harness_counters)
  for ns in "$C" "${ID}s0" "${ID}s1"; do rcv0+=("$(udp_rcvbuf_errors "$ns")"); done
  out=$(ip netns exec "$C" "$SIM" --machines "$N" --spread "$SPREAD" --deadline "$DEADLINE" \
        --iface br0 --seed "$round" --boot-attempts "$BOOTS" \
        --per-machine "${raw%.jsonl}-$side-r$round.machines.jsonl") || true
  [ -n "$KILLER" ] && { wait "$KILLER" 2>/dev/null || true; KILLER=""; }
  after=$(harness_counters)
  for ns in "$C" "${ID}s0" "${ID}s1"; do rcv1+=("$(udp_rcvbuf_errors "$ns")"); done
  harness=$(printf '{"neigh_table_fulls":%d,"backlog_drops":%d,"udp_rcvbuf_errors_client_ns":%d,"udp_rcvbuf_errors_server_ns":%d}' \
    $((${after% *} - ${before% *})) $((${after#* } - ${before#* })) \
    $((rcv1[0] - rcv0[0])) $((rcv1[1] - rcv0[1] + rcv1[2] - rcv0[2])))
  # Both read while the servers run: their database sessions are PostgreSQL's live children.
  cb_cpu=$(cpu_of "${pids[@]}")
  pg_used=$(($(pg_cpu) - pg0))
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "$out" ] || out='{"machines":0,"failures":-1}'
  echo "{\"side\":\"$side\",\"round\":$round,\"chainboot_cpu_s\":$(ticks_s "$cb_cpu"),\"postgres_cpu_s\":$(ticks_s "$pg_used"),\"harness\":$harness,\"sim\":$out}" | tee -a "$raw"
}

for ((r = 1; r <= ROUNDS; r++)); do
  for side in $SIDES; do run_side "$side" "$r"; done
done

python3 - "$raw" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
sides = [s for s in ("sqlite1", "pg2", "pg2-kill") if any(r["side"] == s for r in runs)]
def med(side, f):
    v = [f(r) for r in runs if r["side"] == side and f(r) is not None]
    return statistics.median(v) if v else None
rows = [("time-to-kernel p50 s", lambda r: r["sim"].get("time_to_kernel_p50")),
        ("time-to-kernel p99 s", lambda r: r["sim"].get("time_to_kernel_p99")),
        ("failures", lambda r: r["sim"].get("failures")),
        ("reboots", lambda r: r["sim"].get("reboots")),
        ("DHCP retransmits", lambda r: r["sim"].get("dhcp_retransmits")),
        ("fetches from a peer (||)", lambda r: r["sim"].get("http_alternatives")),
        ("chainboot CPU s", lambda r: r["chainboot_cpu_s"]),
        ("PostgreSQL CPU s", lambda r: r["postgres_cpu_s"]),
        ("wall s", lambda r: r["sim"].get("wall_seconds"))]
fmt = lambda x: "-" if x is None else f"{x:.2f}"
print(f"{'median over rounds':24}" + "".join(f"{s:>10}" for s in sides))
for name, f in rows:
    print(f"{name:24}" + "".join(f"{fmt(med(s, f)):>10}" for s in sides))
p99 = {s: med(s, lambda r: r["sim"].get("time_to_kernel_p99")) for s in sides}
if p99.get("pg2") and p99.get("sqlite1"):
    print(f"ratio p99 pg2 / sqlite1        {p99['pg2'] / p99['sqlite1']:.2f}")
if p99.get("pg2-kill") and p99.get("pg2"):
    print(f"ratio p99 pg2-kill / pg2       {p99['pg2-kill'] / p99['pg2']:.2f}  (target <= 1.5)")
for r in runs:
    if r["sim"].get("errors"):
        print(r["side"], r["round"], "errors:", r["sim"]["errors"])
    h = r.get("harness", {})
    lost = {k: v for k, v in h.items() if k != "udp_rcvbuf_errors_server_ns" and v}
    print(r["side"], r["round"], "harness:", h,
          "<- the harness dropped packets: this run measured the harness, not the servers" if lost else "")
PY
