#!/usr/bin/env bash
# The container image, built offline with buildah (FROM scratch: no base image to pull) into a
# private storage, then its own root filesystem (the image's layer, unpacked) run with a plain
# chroot in a network namespace, as `docker run --network host` would run it: an ordinary DHCP
# client gets an address, TFTP hands out the iPXE first stage inside the image, HTTP answers
# iPXE. No container runtime is needed (none runs on this machine). Prints
# "container: N passed, M failed".
# Network safety: namespaces made here (198.18.0.0/24), removed on exit; processes by PID.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
passed=0 failed=0
ok() { echo "PASS $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }
finish() { echo "container: $passed passed, $failed failed"; [ "$failed" = 0 ]; }
for t in buildah ip busybox tftp curl python3; do
  command -v "$t" >/dev/null || { echo "missing $t: run .ci/install-deps"; exit 1; }
done
bash "$here/build-rootfs.sh" dev >/dev/null 2>&1 || { bash "$here/build-rootfs.sh" dev; exit 1; }
work=$(mktemp -d /var/tmp/chainboot-image.XXXXXX)
ns="cbimg-$$"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && { kill -TERM "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; }
  ip netns del "$ns" 2>/dev/null
  ip netns del "$ns-c" 2>/dev/null
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
b() { buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs "$@"; }
if b bud --isolation chroot -f "$here/Containerfile" -t localhost/chainboot:test target/container \
  >"$work/build.log" 2>&1; then
  ok "buildah builds the image from scratch ($(du -sh target/container/rootfs | cut -f1) root)"
else
  bad "buildah bud"; tail -20 "$work/build.log"; finish; exit 1
fi
b inspect --type image localhost/chainboot:test >"$work/inspect.json"
python3 - "$work/inspect.json" <<'PY' && ok "entrypoint, command and volume as documented" || bad "image config"
import json, sys
c = json.load(open(sys.argv[1]))["OCIv1"]["config"]
assert c["Entrypoint"] == ["/usr/bin/chainboot"], c
assert c["Cmd"] == ["serve", "--config", "/etc/chainboot/chainboot.toml"], c
assert "/var/lib/chainboot" in c.get("Volumes", {}), c
PY
b push localhost/chainboot:test "oci:$work/oci:test" >/dev/null 2>&1 || { bad "buildah push"; finish; exit 1; }
# The image's one layer, unpacked: the root filesystem a container of it gets.
layer=$(python3 - "$work/oci" <<'PY'
import json, sys, os
d = sys.argv[1]
idx = json.load(open(os.path.join(d, "index.json")))
digest = idx["manifests"][0]["digest"].split(":")[1]
man = json.load(open(os.path.join(d, "blobs", "sha256", digest)))
print(os.path.join(d, "blobs", "sha256", man["layers"][0]["digest"].split(":")[1]))
PY
)
root=$work/root
mkdir -p "$root"
tar -C "$root" -xf "$layer" && ok "the image's layer unpacks" || bad "unpacking the layer"
chroot "$root" /usr/bin/chainboot check --config /etc/chainboot/chainboot.toml >"$work/check.log" 2>&1 \
  && ok "the starter config in the image passes check (iPXE binaries inside)" || { bad "check in the image"; cat "$work/check.log"; }
ip netns add "$ns"; ip netns add "$ns-c"
ip -n "$ns" link set lo up; ip -n "$ns-c" link set lo up
ip link add eth0 netns "$ns" type veth peer name cli0 netns "$ns-c"
ip -n "$ns" addr add 198.18.0.1/24 dev eth0; ip -n "$ns-c" addr add 198.18.0.2/24 dev cli0
ip -n "$ns" link set eth0 up; ip -n "$ns-c" link set cli0 up
cat >"$root/etc/chainboot/test.toml" <<'TOML'
[server]
interfaces = ["eth0"]
[dhcp]
mode = "server"
[[dhcp.subnet]]
cidr = "198.18.0.0/24"
pools = [["198.18.0.100", "198.18.0.200"]]
[[profile]]
name = "local-disk"
action = "local-disk"
TOML
ip netns exec "$ns" chroot "$root" /usr/bin/chainboot serve --config /etc/chainboot/test.toml \
  >"$work/serve.log" 2>&1 &
server_pid=$!
for ((n = 0; n < 100; n++)); do
  grep -qs "ready: SIGHUP" "$work/serve.log" && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.2
done
grep -qs "ready: SIGHUP" "$work/serve.log" && ok "serves from the image's root" || { bad "serve"; tail -20 "$work/serve.log"; }
timeout 20 ip netns exec "$ns-c" busybox udhcpc -f -q -n -i cli0 -t 3 -T 1 -s /bin/true >"$work/udhcpc.log" 2>&1
grep -q "lease of 198.18.0.1" "$work/udhcpc.log" && ok "a DHCP client gets an address" || { bad "DHCP"; cat "$work/udhcpc.log"; }
(cd "$work" && timeout 20 ip netns exec "$ns-c" tftp 198.18.0.1 -m binary -c get undionly.kpxe)
cmp -s "$work/undionly.kpxe" "$root/usr/lib/ipxe/undionly.kpxe" \
  && ok "TFTP hands out the image's undionly.kpxe" || bad "TFTP undionly.kpxe"
timeout 20 ip netns exec "$ns-c" curl -s --max-time 10 http://198.18.0.1/boot.ipxe >"$work/boot.ipxe"
head -1 "$work/boot.ipxe" | grep -q '^#!ipxe' && ok "HTTP answers iPXE (/boot.ipxe)" || bad "HTTP /boot.ipxe"
kill -TERM "$server_pid"
wait "$server_pid" 2>/dev/null
server_pid=""
grep -q "chainboot stopped" "$work/serve.log" && ok "SIGTERM stops it cleanly" || bad "SIGTERM"
finish
