#!/usr/bin/env bash
# Per-machine script requests/s (the target: script >= 0.8x nginx serving a small static
# file), side by side in one run. Loopback only; every process started here is stopped by PID.
# Usage: bash crates/policy/bench/script-rps.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/../../.."
secs=${1:-5}
conns=${2:-32}
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "missing $tool (bash .ci/install-deps)" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release -q -p chainboot-policy --example policy_server
port_c=$((20000 + RANDOM % 10000)); port_n=$((port_c + 1))

# nginx: a small static file of about the size of a rendered script.
mkdir -p "$work/www" "$work/nginx"
"${CARGO_TARGET_DIR:-target}"/release/examples/policy_server "$port_c" "$work/state" 2>"$work/policy.log" & pids+=($!)
sleep 1
curl -sf "http://127.0.0.1:$port_c/ipxe?mac=52-54-00-12-34-56&hostname=node1" > "$work/www/script.ipxe"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx; uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server { listen 127.0.0.1:$port_n; root $work/www; }
}
CONF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -g 'daemon off;' & pids+=($!)
sleep 1
echo "script size: $(wc -c < "$work/www/script.ipxe") bytes"

rps() { wrk -t2 -c"$conns" -d"${secs}s" "$1" | awk '/Requests\/sec/ {print $2}'; }
n=$(rps "http://127.0.0.1:$port_n/script.ipxe")
c=$(rps "http://127.0.0.1:$port_c/ipxe?mac=52-54-00-12-34-56&hostname=node1")
echo "nginx static small file: $n req/s"
echo "chainboot /ipxe script:  $c req/s"
awk -v c="$c" -v n="$n" 'BEGIN { printf "ratio: %.2f (target >= 0.80)\n", c / n }'
