#!/usr/bin/env bash
# A/B of two chainboot binaries' HTTP cost: CPU time (user+system of the server process) per
# request, which on a busy machine moves much less than throughput does. Both servers run at
# once in one private network namespace, each with bench/http/run.sh's config (default log
# level, observers, event log, store and API listener; the HTTP root, DHCP off), and wrk
# alternates between them, case by case, round by round:
#   small  1 KiB static file (/files/small.bin), 64 connections, keep-alive
#   gen    the generated boot script (/boot.ipxe), 64 connections
#   big    8 MiB static file (/files/big.bin), 8 connections: CPU per MiB sent
# Prints each run and the medians. Numbers from a busy machine compare A with B only.
#
# Usage: bash bench/http/ab.sh BINARY_A BINARY_B [ROUNDS (5)] [SECONDS per run (3)]
# Env: CASES="small gen big", TLS=1 (HTTPS with one ECDSA certificate for both).
# Needs: root (namespace), wrk, curl, openssl (TLS=1).
set -euo pipefail

A=$(realpath "$1")
B=$(realpath "$2")
ROUNDS=${3:-5}
SECS=${4:-3}
CASES=${CASES:-"small gen big"}
TLS=${TLS:-0}
NS=cbab$$
[ "$(id -u)" = 0 ] || { echo "bench/http/ab.sh: needs root (network namespace)" >&2; exit 1; }
for tool in wrk curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool (bash .ci/install-deps)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/chainboot-ab.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 100); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$WORK/root"
head -c 1024 /dev/urandom >"$WORK/root/small.bin"
head -c $((8 << 20)) /dev/urandom >"$WORK/root/big.bin"
SCHEME=http
if [ "$TLS" = 1 ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
    chmod 600 "$WORK/key.pem"
    SCHEME=https
fi

# start NAME BINARY HTTP_PORT TFTP_PORT API_PORT: the PID in $SERVER_PID, the URL in $SERVER_URL.
start() {
    local name=$1 bin=$2 port=$3 tftp=$4 api=$5 listen tls=""
    listen="listen = \"127.0.0.1:$port\""
    if [ "$TLS" = 1 ]; then
        # The plain listener stays (as shipped), on a port of its own.
        listen="listen = \"127.0.0.1:$((port + 1000))\"
tls_listen = \"127.0.0.1:$port\""
        tls="tls = { cert = \"$WORK/cert.pem\", key = \"$WORK/key.pem\" }"
    fi
    cat >"$WORK/$name.toml" <<EOF
[server]
state_dir = "$WORK/state-$name"
[dhcp]
mode = "off"
[tftp]
listen = "127.0.0.1:$tftp"
[http]
$listen
$tls
root = "$WORK/root"
[api]
listen = "127.0.0.1:$api"
EOF
    # `ip netns exec` execs: $! is the server's own PID.
    ip netns exec "$NS" "$bin" serve --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    SERVER_URL=$SCHEME://127.0.0.1:$port
    for _ in $(seq 100); do
        ip netns exec "$NS" curl -skf --noproxy '*' -o /dev/null "$SERVER_URL/files/small.bin" && return 0
        sleep 0.1
    done
    echo "$name did not start:" >&2
    cat "$WORK/$name.log" >&2
    exit 1
}
start a "$A" 80 69 8079
A_PID=$SERVER_PID A_URL=$SERVER_URL
start b "$B" 81 6969 8078
B_PID=$SERVER_PID B_URL=$SERVER_URL

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# run PID URL CONNS -> "req/s cpu-us-per-request cpu-ms-per-MiB"
run() {
    local pid=$1 url=$2 conns=$3 c0 c1 out
    c0=$(cpu_ticks "$pid")
    out=$(ip netns exec "$NS" wrk -t2 -c"$conns" -d"${SECS}s" "$url")
    c1=$(cpu_ticks "$pid")
    echo "$out" | awk -v ticks=$((c1 - c0)) -v tick_us="$TICK_US" '
        /requests in/ { n = $1; v = $5; u = v; gsub(/[0-9.]/, "", u); gsub(/[A-Za-z]/, "", v)
            if (u == "GB") v *= 1024; else if (u == "KB") v /= 1024; else if (u == "B") v /= 1048576
            mib = v }
        /^Requests\/sec:/ { rps = $2 }
        END { printf "%.0f %.1f %.2f\n", rps, (n > 0 ? ticks * tick_us / n : 0), (mib > 0 ? ticks * tick_us / 1000 / mib : 0) }'
}

path_of() { case $1 in small) echo /files/small.bin ;; gen) echo /boot.ipxe ;; big) echo /files/big.bin ;; esac; }
conns_of() { case $1 in big) echo 8 ;; *) echo 64 ;; esac; }

declare -A R
echo "A: $A"
echo "B: $B"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); $ROUNDS rounds of ${SECS}s per case and binary; $SCHEME"
for round in $(seq "$ROUNDS"); do
    for c in $CASES; do
        # Who goes first alternates, so neither always gets the warmer (or busier) slot.
        order="a b"
        [ $((round % 2)) = 0 ] && order="b a"
        for who in $order; do
            if [ "$who" = a ]; then pid=$A_PID url=$A_URL; else pid=$B_PID url=$B_URL; fi
            read -r rps us mib < <(run "$pid" "$url$(path_of "$c")" "$(conns_of "$c")")
            R[${who}_${c}_rps_$round]=$rps
            R[${who}_${c}_us_$round]=$us
            R[${who}_${c}_mib_$round]=$mib
            echo "round $round $c $who: $rps req/s, $us CPU us/request, $mib CPU ms/MiB"
        done
    done
done

median() { tr ' ' '\n' | sort -g | awk 'NF {a[++n]=$1} END {print a[int((n+1)/2)]}'; }
col() { local s="" r; for r in $(seq "$ROUNDS"); do s="$s ${R[${1}_$r]}"; done; echo "$s" | median; }
echo
echo "medians over $ROUNDS rounds (load now $(cut -d' ' -f1 /proc/loadavg)):"
for c in $CASES; do
    for m in us mib rps; do
        [ "$c" = big ] && [ "$m" = us ] && continue
        [ "$c" != big ] && [ "$m" = mib ] && continue
        a=$(col "a_${c}_$m"); b=$(col "b_${c}_$m")
        unit="CPU us/request"
        [ "$m" = mib ] && unit="CPU ms/MiB"
        [ "$m" = rps ] && unit="req/s"
        awk -v c="$c" -v u="$unit" -v a="$a" -v b="$b" 'BEGIN { printf "%-5s %-15s A %10s  B %10s  B/A %.2f\n", c, u, a, b, (a > 0 ? b / a : 0) }'
    done
done
