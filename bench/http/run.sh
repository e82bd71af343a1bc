#!/usr/bin/env bash
# HTTP benchmark: the shipped binary (`chainboot serve`: default config, default log level,
# observers and events on, plus the HTTP root, one ISO and DHCP off) vs nginx (sendfile on) on
# loopback inside a private network namespace, interleaved rounds.
#   1 KB file, req/s, 64 connections
#   1 KB generated boot script (/boot.ipxe) vs nginx's static 1 KB
#   8 MiB file, MB/s
#   the same 8 MiB file read from inside an ISO image (chainboot only; compared to plain)
# Targets: >= 0.9x nginx on 8 MiB, >= 0.8x nginx req/s on 1 KB static, generated scripts >= 1.0x
# nginx's static 1 KB, ISO within 10%.
# TLS=1: the same over HTTPS, both servers given one ECDSA P-256 certificate (chainboot's
# `[http] tls_listen` + `tls = { cert, key }`, nginx `ssl_certificate`), plus new TLS
# handshakes per second (a new connection per request, no session resumption). Targets:
# 1 KiB req/s with keep-alive >= 1.0x, handshakes/s >= 1.0x, 8 MiB MB/s >= 0.9x.
#
# Usage: bash bench/http/run.sh [ROUNDS (3)] [SECONDS per run (5)]
# Env: CONTENDED=1 (a busy loop pinned to the last CPU during the runs), TLS=1, CHAINBOOT=path,
#      SKIP_BUILD=1, FORCE=1 (run although the machine is busy).
# Needs: root (namespace), wrk, nginx, xorriso, cargo.
set -euo pipefail

ROUNDS=${1:-3}
SECS=${2:-5}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../lib.sh
. "$REPO/bench/lib.sh"
CONTENDED=${CONTENDED:-0}
TLS=${TLS:-0}
NS=cbhttp$$
[ "$(id -u)" = 0 ] || { echo "bench/http: needs root (network namespace)" >&2; exit 1; }
mkdir -p "$REPO/bench/http/results"
KIND=http; [ "$TLS" = 1 ] && KIND=https
RAW=bench/http/results/$KIND-$(date -u +%Y%m%dT%H%M%SZ).txt
# Everything printed is the run's record.
exec > >(tee "$REPO/$RAW")
for tool in wrk nginx xorriso cargo openssl; do
    command -v "$tool" >/dev/null || { echo "missing $tool (bash .ci/install-deps)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/chainboot-bench-http.XXXXXX)
chmod 755 "$WORK"  # nginx workers run as an unprivileged user
PIDS=()
cleanup() {
    hog_stop
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    # Bounded: what has not stopped within 10 s is killed.
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

SERVER=$(chainboot_bin)
ip netns add "$NS"
ip -n "$NS" link set lo up
in_ns() { ip netns exec "$NS" "$@"; }

mkdir -p "$WORK/root" "$WORK/isosrc"
head -c 1024 /dev/urandom >"$WORK/root/small.bin"
head -c $((8 << 20)) /dev/urandom >"$WORK/root/big.bin"
cp "$WORK/root/big.bin" "$WORK/isosrc/big.bin"
xorriso -as mkisofs -quiet -R -J -o "$WORK/bench.iso" "$WORK/isosrc" 2>/dev/null

# A namespace of our own: the ports are ours.
P_CB=80
P_NG=8080
SCHEME=http
NG_LISTEN="listen 127.0.0.1:$P_NG;"
CB_TLS=""
if [ "$TLS" = 1 ]; then
    # One certificate for both servers; chainboot wants its key 0600.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
    chmod 600 "$WORK/key.pem"
    P_CB=443
    P_NG=8443
    SCHEME=https
    # Both speak TLS 1.2 and 1.3 (nginx before 1.23.4 offers only up to 1.2 unless told), so
    # wrk negotiates the same protocol and suite with each: TLS 1.3, TLS_AES_256_GCM_SHA384.
    NG_LISTEN="listen 127.0.0.1:$P_NG ssl; ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem; ssl_session_cache off; ssl_session_tickets off;"
    CB_TLS="tls_listen = \"127.0.0.1:$P_CB\"
tls = { cert = \"$WORK/cert.pem\", key = \"$WORK/key.pem\" }"
fi
CB_URL=$SCHEME://127.0.0.1:$P_CB
NG_URL=$SCHEME://127.0.0.1:$P_NG

cat >"$WORK/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/ngx-body;
    proxy_temp_path $WORK/ngx-proxy;
    fastcgi_temp_path $WORK/ngx-fcgi;
    uwsgi_temp_path $WORK/ngx-uwsgi;
    scgi_temp_path $WORK/ngx-scgi;
    server {
        $NG_LISTEN
        root $WORK/root;
    }
}
EOF
# The shipped binary's config: its defaults plus the root, the ISO, and no DHCP (nothing to
# boot here; the default proxy mode wants a real interface).
cat >"$WORK/chainboot.toml" <<EOF
[server]
state_dir = "$WORK/state"
[dhcp]
mode = "off"
[tftp]
listen = "127.0.0.1:69"
[http]
listen = "127.0.0.1:80"
$CB_TLS
root = "$WORK/root"
[[iso]]
name = "bench"
path = "$WORK/bench.iso"
EOF
# Started with `ip netns exec` itself, not through in_ns: `ip netns exec` execs, so $! is the
# server's own PID (through the shell function it would be a subshell's, whose CPU time is 0).
ip netns exec "$NS" nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
PIDS+=($NGINX_PID)
ip netns exec "$NS" "$SERVER" serve --config "$WORK/chainboot.toml" >"$WORK/chainboot.log" 2>&1 &
CB_PID=$!
PIDS+=($CB_PID)

for port in $P_CB $P_NG; do
    for _ in $(seq 50); do
        in_ns curl -sk --noproxy '*' -o /dev/null "$SCHEME://127.0.0.1:$port/" && break
        sleep 0.1
    done
done
# nginx's workers are its master's children.
NGINX_WORKERS="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
# Sanity: both serve the same bytes.
cmp <(in_ns curl -sk --noproxy "*" "$CB_URL/files/big.bin") "$WORK/root/big.bin" || { cat "$WORK/chainboot.log"; exit 1; }
cmp <(in_ns curl -sk --noproxy '*' "$CB_URL/iso/bench/big.bin") "$WORK/root/big.bin"
cmp <(in_ns curl -sk --noproxy '*' "$NG_URL/big.bin") "$WORK/root/big.bin"
in_ns curl -skf --noproxy '*' -o /dev/null "$CB_URL/boot.ipxe" || { echo "no /boot.ipxe" >&2; exit 1; }
if [ "$TLS" = 1 ]; then
    # The record says what each server negotiated with an OpenSSL client (wrk is one): a
    # comparison is fair only when both speak the same protocol and suite.
    for port in $P_CB $P_NG; do
        tls=$(in_ns openssl s_client -connect "127.0.0.1:$port" -brief </dev/null 2>&1 |
            awk -F': ' '/^Protocol version/ {p = $2} /^Ciphersuite/ {c = $2} END {print p, c}')
        echo "TLS on port $port: $tls"
    done
fi

# CPU time (user+system, clock ticks) of a set of processes: on a shared machine the
# throughput of one run depends on what else runs; CPU per request does much less.
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# wrk prints "Requests/sec: N", "N requests in" and "Transfer/sec: N{KB,MB,GB}".
# WRK_EXTRA: extra wrk arguments (the handshake case closes every connection after its request;
# an array, since wrk reads a header only as "Name: value" with the space).
WRK_EXTRA=()
wrk_run() { # conns url pids... -> "req/s MB/s cpu-us-per-request"
    local conns=$1 url=$2 out c0 c1 threads=2
    shift 2
    [ "$conns" -ge 2 ] || threads=1 # wrk wants at least one connection per thread
    c0=$(cpu_ticks "$@")
    out=$(in_ns wrk -t"$threads" -c"$conns" -d"${SECS}s" "${WRK_EXTRA[@]}" "$url")
    c1=$(cpu_ticks "$@")
    echo "$out" | awk -v ticks=$((c1 - c0)) -v tick_us="$TICK_US" '
        /requests in/ { n = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /^Transfer\/sec:/ {
            v = $2; u = v; gsub(/[0-9.]/, "", u); gsub(/[A-Za-z]/, "", v)
            if (u == "GB") v *= 1024; else if (u == "KB") v /= 1024; else if (u == "B") v /= 1048576
            mbs = v
        }
        END { printf "%.0f %.1f %.1f\n", rps, mbs, (n > 0 ? ticks * tick_us / n : 0) }'
}

LOAD_BEFORE=$(check_quiet)
if [ "$CONTENDED" = 1 ]; then hog_start; fi
declare -A R
for round in $(seq "$ROUNDS"); do
    read -r R[ng_small_$round] _ R[ng_small_cpu_$round] < <(wrk_run 64 "$NG_URL/small.bin" $NGINX_WORKERS)
    read -r R[cb_small_$round] _ R[cb_small_cpu_$round] < <(wrk_run 64 "$CB_URL/files/small.bin" "$CB_PID")
    read -r R[cb_gen_$round] _ R[cb_gen_cpu_$round] < <(wrk_run 64 "$CB_URL/boot.ipxe" "$CB_PID")
    read -r _ R[ng_big_$round] _ < <(wrk_run 8 "$NG_URL/big.bin" $NGINX_WORKERS)
    read -r _ R[cb_big_$round] _ < <(wrk_run 8 "$CB_URL/files/big.bin" "$CB_PID")
    read -r _ R[cb_iso_$round] _ < <(wrk_run 8 "$CB_URL/iso/bench/big.bin" "$CB_PID")
    if [ "$TLS" = 1 ]; then
        WRK_EXTRA=(-H "Connection: close")
        read -r R[ng_hs_$round] _ _ < <(wrk_run 16 "$NG_URL/small.bin" $NGINX_WORKERS)
        read -r R[cb_hs_$round] _ _ < <(wrk_run 16 "$CB_URL/files/small.bin" "$CB_PID")
        WRK_EXTRA=()
        echo "round $round: new TLS handshakes/s nginx ${R[ng_hs_$round]} chainboot ${R[cb_hs_$round]}"
    fi
    echo "round $round: 1KB req/s (CPU us/req) nginx ${R[ng_small_$round]} (${R[ng_small_cpu_$round]})" \
        "chainboot ${R[cb_small_$round]} (${R[cb_small_cpu_$round]}) generated ${R[cb_gen_$round]} (${R[cb_gen_cpu_$round]});" \
        "8MiB MB/s nginx ${R[ng_big_$round]} chainboot ${R[cb_big_$round]} iso ${R[cb_iso_$round]}"
done

median() { tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Throughput per concurrency level (1 KiB static, both servers, interleaved; one run each at
# CONNS levels, SECS each) for the plot.
CONNS=${CONNS:-"1 4 16 64 256"}
SWEEP=${RAW%.txt}-conns.dat
echo "# conns nginx_rps chainboot_rps chainboot_generated_rps" >"$REPO/$SWEEP"
for c in $CONNS; do
    read -r ng _ _ < <(wrk_run "$c" "$NG_URL/small.bin" $NGINX_WORKERS)
    read -r cb _ _ < <(wrk_run "$c" "$CB_URL/files/small.bin" "$CB_PID")
    read -r gen _ _ < <(wrk_run "$c" "$CB_URL/boot.ipxe" "$CB_PID")
    echo "$c $ng $cb $gen" >>"$REPO/$SWEEP"
done
if command -v gnuplot >/dev/null; then
    gnuplot <<GP || echo "(no plot: gnuplot failed)"
set terminal svg size 900,500
set output '$REPO/${RAW%.txt}.svg'
set title 'HTTP 1 KiB, requests/s per concurrent connections (loopback, contended $CONTENDED)'
set logscale x 2
set xlabel 'connections'
set ylabel 'requests/s'
set key top left
plot '$REPO/$SWEEP' using 1:2 with linespoints title 'nginx static', \
     '' using 1:3 with linespoints title 'chainboot static', \
     '' using 1:4 with linespoints title 'chainboot generated script'
GP
fi
col() { local k=$1 s=""; for r in $(seq "$ROUNDS"); do s="$s ${R[${k}_$r]}"; done; echo $s | median; }
ng_small=$(col ng_small); cb_small=$(col cb_small); cb_gen=$(col cb_gen)
ng_small_cpu=$(col ng_small_cpu); cb_small_cpu=$(col cb_small_cpu); cb_gen_cpu=$(col cb_gen_cpu)
ng_big=$(col ng_big); cb_big=$(col cb_big); cb_iso=$(col cb_iso)
if [ "$TLS" = 1 ]; then ng_hs=$(col ng_hs); cb_hs=$(col cb_hs); fi
hog_stop
echo
echo "medians over $ROUNDS rounds of ${SECS}s ($(nproc) cores, $(date -u +%FT%TZ), load before $LOAD_BEFORE, contended $CONTENDED, $SCHEME)"
awk -v a="$cb_small" -v b="$ng_small" 'BEGIN { printf "1 KB req/s, 64 conns:  chainboot %s, nginx %s -> %.2fx (target >= 0.8x)\n", a, b, a/b }'
awk -v a="$cb_gen" -v b="$ng_small" 'BEGIN { printf "1 KB generated req/s:   chainboot %s, nginx static %s -> %.2fx (script target >= 1.0x)\n", a, b, a/b }'
awk -v a="$cb_big" -v b="$ng_big" 'BEGIN { printf "8 MiB MB/s, 8 conns:    chainboot %s, nginx %s -> %.2fx (target >= 0.9x)\n", a, b, a/b }'
awk -v a="$cb_iso" -v b="$cb_big" 'BEGIN { printf "8 MiB from ISO MB/s:    %s vs plain %s -> %.2fx (target >= 0.9x)\n", a, b, a/b }'
[ "$TLS" = 1 ] && awk -v a="$cb_hs" -v b="$ng_hs" 'BEGIN { printf "new TLS handshakes/s:   chainboot %s, nginx %s -> %.2fx (target >= 1.0x)\n", a, b, a/b }'
awk -v a="$cb_small_cpu" -v g="$cb_gen_cpu" -v b="$ng_small_cpu" 'BEGIN { printf "1 KB CPU us/request:    chainboot static %s, generated %s, nginx %s -> efficiency %.2fx / %.2fx of nginx\n", a, g, b, (a > 0 ? b/a : 0), (g > 0 ? b/g : 0) }'
# The summary table's lines (bench/summary.py).
cond=quiet; [ "$CONTENDED" = 1 ] && cond=contended
mkdir -p "$REPO/bench/summary"
cmd=${BENCH_COMMAND:-"TLS=$TLS CONTENDED=$CONTENDED bash bench/http/run.sh $ROUNDS $SECS"}
now=$(date -u '+%Y-%m-%d %H:%MZ')
if [ "$TLS" = 1 ]; then
    awk -v a="$cb_small" -v b="$ng_small" -v hs="$cb_hs" -v nhs="$ng_hs" -v big="$cb_big" -v nb="$ng_big" -v c="$cond" -v d="$now" -v cmd="$cmd" -v raw="$RAW" 'BEGIN {
    printf "HTTPS 1 KiB static req/s (keep-alive) vs nginx TLS\t%s\t%.2f\t%s\t%s\t%s\n", c, a / b, d, cmd, raw
    printf "HTTPS new TLS handshakes/s vs nginx TLS\t%s\t%.2f\t%s\t%s\t%s\n", c, hs / nhs, d, cmd, raw
    printf "HTTPS 8 MiB MB/s vs nginx TLS\t%s\t%.2f\t%s\t%s\t%s\n", c, big / nb, d, cmd, raw
}' >"$REPO/bench/summary/https-$cond.tsv"
    exit 0
fi
awk -v a="$cb_small" -v g="$cb_gen" -v b="$ng_small" -v big="$cb_big" -v nb="$ng_big" -v c="$cond" -v d="$now" -v cmd="$cmd" -v raw="$RAW" 'BEGIN {
    printf "HTTP 1 KiB static req/s vs nginx\t%s\t%.2f\t%s\t%s\t%s\n", c, a / b, d, cmd, raw
    printf "HTTP generated script req/s vs nginx static 1 KiB\t%s\t%.2f\t%s\t%s\t%s\n", c, g / b, d, cmd, raw
    printf "HTTP 8 MiB MB/s vs nginx\t%s\t%.2f\t%s\t%s\t%s\n", c, big / nb, d, cmd, raw
}' >"$REPO/bench/summary/http-$cond.tsv"
