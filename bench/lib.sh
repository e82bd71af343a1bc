# Shared by bench/*/run.sh (source it): the shipped binary, a CPU hog for contended runs,
# medians.
#
# Every benchmark that decides a target runs `target/release/chainboot serve` (or $CHAINBOOT)
# with its default config plus only what the scenario needs (listen addresses, roots, limits a
# load generator must lift): default log level, observers, events and store as shipped.

BENCH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The shipped binary, built in release unless SKIP_BUILD is set.
chainboot_bin() {
  local target=${CARGO_TARGET_DIR:-$BENCH_REPO/target}
  if [ -z "${SKIP_BUILD:-}" ] && [ -z "${CHAINBOOT:-}" ]; then
    (cd "$BENCH_REPO" && cargo build --release -q -p chainboot) >&2
  fi
  echo "${CHAINBOOT:-$target/release/chainboot}"
}

# A contended run: one busy loop pinned to the last CPU, the same for every server; the
# machine then has one CPU fewer than the server thinks. HOG_PID is set while it runs.
HOG_PID=
hog_start() {
  local cpu=$(($(nproc) - 1))
  taskset -c "$cpu" sh -c 'while :; do :; done' &
  HOG_PID=$!
}
hog_stop() {
  if [ -n "$HOG_PID" ]; then
    kill "$HOG_PID" 2>/dev/null || true
    wait "$HOG_PID" 2>/dev/null || true
    HOG_PID=
  fi
}

# The machine must be quiet for numbers that decide a target: refuses (unless FORCE=1) when
# the 1-minute load average is 1.5 or more, and says which it was in the output.
check_quiet() {
  local load
  load=$(cut -d' ' -f1 /proc/loadavg)
  if awk -v l="$load" 'BEGIN { exit !(l >= 1.5) }' && [ -z "${FORCE:-}" ]; then
    echo "load average $load >= 1.5: not a quiet machine (FORCE=1 runs anyway, numbers then do not decide targets)" >&2
    exit 3
  fi
  echo "$load"
}

# How a storm's harness did (bench/storm, bench/fleet): packets the host lost, which would make
# a run measure the harness rather than the server.
# harness_counters: "neighbour-table-fulls backlog-drops" for the host, summed over CPUs.
harness_counters() {
  python3 - <<'PY'
rows = [l.split() for l in open("/proc/net/stat/arp_cache")]
i = rows[0].index("table_fulls")
fulls = sum(int(r[i], 16) for r in rows[1:])
drops = sum(int(l.split()[1], 16) for l in open("/proc/net/softnet_stat"))
print(fulls, drops)
PY
}
# udp_rcvbuf_errors NS: UDP datagrams dropped for a full receive buffer in namespace NS.
udp_rcvbuf_errors() {
  ip netns exec "$1" awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp
}
