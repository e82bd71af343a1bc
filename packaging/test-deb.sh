#!/usr/bin/env bash
# The Debian package as a user gets it: built with cargo-deb, installed into a clean Debian
# root made by debootstrap (cached), its files checked, its unit verified, the service's
# command line run as the unit runs it (its user, only its capabilities, no new privileges)
# with each capability taken away in turn to show what needs it, and finally the unit itself
# started by systemd in a container on a boot network, where a BIOS VM netboots through it.
# Prints "package: N passed, M failed"; exit status non-zero if any check failed.
#
# Needs root, debootstrap, systemd-container (systemd-nspawn), qemu and the e2e packages
# (.ci/install-deps). The debootstrap root is cached as a tarball under $CHAINBOOT_CACHE
# (default /work/cache when writable, else target/cache): built once (minutes, from the Debian
# mirror apt on this host uses), reused as it is afterwards.
# Network safety: everything runs in namespaces made here (198.18.0.0/24), removed on exit;
# processes are ended by their PID.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"
passed=0 failed=0
ok() { echo "PASS $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi; }
finish() { echo "package: $passed passed, $failed failed"; [ "$failed" = 0 ]; }

[ "$(id -u)" = 0 ] || { echo "must run as root"; exit 1; }
for t in debootstrap systemd-nspawn cargo-deb dpkg-deb ip busybox rdisc6 lintian; do
  command -v "$t" >/dev/null || { echo "missing $t: run .ci/install-deps"; exit 1; }
done

# ---- the clean Debian root (cached) ----
cache=${CHAINBOOT_CACHE:-/work/cache}
{ mkdir -p "$cache" && [ -w "$cache" ]; } 2>/dev/null || cache=$repo/target/cache
cache=$cache/debootstrap
mkdir -p "$cache"
suite=bookworm
# What the root holds: systemd to run the unit, adduser for the package, ipxe (the package's
# Recommends), iproute2 and procps to look inside.
include=systemd,systemd-sysv,dbus,adduser,ipxe,iproute2,procps,ca-certificates
tarball=$cache/$suite-$(echo "$include" | cksum | cut -d' ' -f1).tar
if [ ! -s "$tarball" ]; then
  # The mirror apt already uses on this host (deb822 or one-line sources).
  mirror=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | head -1)
  [ -n "$mirror" ] || mirror=$(grep -hsE '^deb +http' /etc/apt/sources.list | awk '{print $2}' | head -1)
  [ -n "$mirror" ] || { echo "no Debian mirror configured for apt on this host"; exit 1; }
  build=$(mktemp -d "$cache/build.XXXXXX")
  start=$(date +%s)
  echo "debootstrap $suite from $mirror (cached afterwards in $tarball)"
  if ! debootstrap --variant=minbase --include="$include" "$suite" "$build/root" "$mirror" >"$build/log" 2>&1; then
    tail -20 "$build/log"; rm -rf "$build"; echo "debootstrap failed"; exit 1
  fi
  tar -C "$build/root" -cf "$build/root.tar" . && mv "$build/root.tar" "$tarball"
  rm -rf "$build"
  echo "debootstrap took $(( $(date +%s) - start ))s"
fi

# ---- the package ----
bash "$here/build-deb.sh" dev >/dev/null 2>&1 || { bash "$here/build-deb.sh" dev; exit 1; }
deb=$(ls -t target/debian/chainboot_*.deb | head -1)

# Debian's own package checker: no error (warnings are printed).
if lintian --fail-on error "$deb" >/tmp/lintian.$$ 2>&1; then
  ok "lintian: no errors"
else
  bad "lintian"
fi
grep -E '^[EW]:' /tmp/lintian.$$ || true
rm -f /tmp/lintian.$$

root=$(mktemp -d /var/tmp/chainboot-pkg.XXXXXX)
caps_ns="cbpkg-$$"
spawned=()
pkg_cleanup() {
  local pid
  for pid in "${spawned[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${spawned[@]}"; do wait "$pid" 2>/dev/null; done
  ip netns del "$caps_ns" 2>/dev/null
  ip netns del "$caps_ns-c" 2>/dev/null
  umount "$root/proc" 2>/dev/null
  if mountpoint -q "$root/proc"; then
    echo "$root/proc still mounted: $root left in place"
  elif [ "${PKG_KEEP:-0}" = 1 ]; then
    echo "kept $root"
  else
    rm -rf --one-file-system "$root"
  fi
}
trap pkg_cleanup EXIT
tar -C "$root" -xf "$tarball"
cp "$deb" "$root/tmp/chainboot.deb"
if chroot "$root" dpkg -i /tmp/chainboot.deb >"$root/tmp/dpkg.log" 2>&1; then
  ok "dpkg -i $(basename "$deb") into a clean $suite root"
else
  bad "dpkg -i"; cat "$root/tmp/dpkg.log"; finish; exit 1
fi
for f in usr/bin/chainboot usr/lib/systemd/system/chainboot.service etc/chainboot/chainboot.toml \
  usr/share/man/man1/chainboot.1.gz usr/share/man/man1/chainboot-init.1.gz \
  usr/share/man/man1/chainboot-doctor.1.gz usr/share/bash-completion/completions/chainboot \
  usr/share/zsh/vendor-completions/_chainboot usr/share/fish/vendor_completions.d/chainboot.fish \
  usr/share/doc/chainboot/install.md; do
  check "installed /$f" test -s "$root/$f"
done
check "/etc/chainboot/chainboot.toml is a conffile" \
  sh -c "chroot '$root' dpkg-query -W -f='\${Conffiles}' chainboot | grep -q /etc/chainboot/chainboot.toml"
check "Recommends: ipxe" sh -c "dpkg-deb -f '$deb' Recommends | grep -qx ipxe"
check "the man page is chainboot's" sh -c "zcat '$root/usr/share/man/man1/chainboot-doctor.1.gz' | grep -q '^.TH chainboot-doctor'"
check "bash completion loads" bash -c "source '$root/usr/share/bash-completion/completions/chainboot' && complete -p chainboot"
check "system user chainboot exists" chroot "$root" getent passwd chainboot
check "the starter config passes check" chroot "$root" chainboot check --config /etc/chainboot/chainboot.toml
if chroot "$root" systemd-analyze verify --man=no chainboot.service >"$root/tmp/verify.log" 2>&1 \
  && ! grep -q . "$root/tmp/verify.log"; then
  ok "systemd-analyze verify chainboot.service (no complaint)"
else
  bad "systemd-analyze verify chainboot.service"; cat "$root/tmp/verify.log"
fi

# ---- the service's command line as the unit runs it, capability by capability ----
# The unit's user, its capability set (read from the unit), no new privileges, in a network
# namespace with a client namespace beside it: srv0 198.18.0.1/24 <-> cli0 198.18.0.2/24.
unit=$root/usr/lib/systemd/system/chainboot.service
user_caps=$(sed -n 's/^AmbientCapabilities=//p' "$unit")
[ "$user_caps" = "$(sed -n 's/^CapabilityBoundingSet=//p' "$unit")" ] \
  && ok "ambient and bounding capabilities agree: $user_caps" || bad "ambient and bounding capabilities differ"
ip netns add "$caps_ns"; ip netns add "$caps_ns-c"
for ns in "$caps_ns" "$caps_ns-c"; do
  # No duplicate address detection: link-local addresses are usable at once.
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  ip -n "$ns" link set lo up
done
ip link add srv0 netns "$caps_ns" type veth peer name cli0 netns "$caps_ns-c"
ip -n "$caps_ns" addr add 198.18.0.1/24 dev srv0; ip -n "$caps_ns-c" addr add 198.18.0.2/24 dev cli0
ip -n "$caps_ns" link set srv0 up; ip -n "$caps_ns-c" link set cli0 up
for ((n = 0; n < 50; n++)); do
  ip -n "$caps_ns" -6 addr show dev srv0 scope link | grep -q fe80 \
    && ip -n "$caps_ns-c" -6 addr show dev cli0 scope link | grep -q fe80 && break
  sleep 0.2
done
# The service reads its interfaces' IPv6 settings under /proc/sys/net (this namespace's).
mount -t proc proc "$root/proc"
mkdir -p "$root/srv/boot" "$root/var/lib/chainboot"
chroot "$root" chown chainboot:chainboot /var/lib/chainboot
chmod 0700 "$root/var/lib/chainboot"
cat >"$root/etc/chainboot/caps.toml" <<'TOML'
[server]
interfaces = ["srv0"]
state_dir = "/var/lib/chainboot"
[dhcp]
mode = "server"
[[dhcp.subnet]]
cidr = "198.18.0.0/24"
pools = [["198.18.0.100", "198.18.0.200"]]
[ipv6]
router_advertisements = "always"
TOML
# run_as_unit LABEL CAPS: the unit's command line with exactly CAPS (comma-separated, setpriv's
# names) in the namespace, for a few seconds; its log in $root/tmp/LABEL.log, its UDP 67 socket
# (receive buffer: SO_RCVBUFFORCE, a CAP_NET_ADMIN privilege, matters only where
# net.core.rmem_max is below 4 MiB, a global setting this test leaves alone) in $root/tmp/LABEL.ss. Returns once it is ready or has exited.
run_as_unit() {
  local label=$1 caps=$2 log=$root/tmp/$1.log pid n
  ip netns exec "$caps_ns" chroot "$root" setpriv --reuid=chainboot --regid=chainboot --init-groups \
    --inh-caps="-all${caps:+,$caps}" --ambient-caps="-all${caps:+,$caps}" \
    --bounding-set="-all${caps:+,$caps}" --no-new-privs \
    /usr/bin/chainboot --log-level debug serve --config /etc/chainboot/caps.toml >"$log" 2>&1 &
  pid=$!
  spawned+=("$pid")
  for ((n = 0; n < 100; n++)); do
    grep -qs "ready: SIGHUP" "$log" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    # A DHCP client without the broadcast flag: the reply is unicast to an address it does
    # not have yet, through the ARP entry the server inserts (SIOCSARP).
    timeout 20 ip netns exec "$caps_ns-c" busybox udhcpc -f -q -n -i cli0 -t 3 -T 1 -s /bin/true \
      >"$root/tmp/$label.udhcpc" 2>&1
    # A router solicitation, answered by an advertisement (raw ICMPv6 socket on srv0).
    timeout 10 ip netns exec "$caps_ns-c" rdisc6 -1 -r 2 -w 1500 cli0 >"$root/tmp/$label.rdisc6" 2>&1
    ip netns exec "$caps_ns" ss -uanm 'sport = :67' >"$root/tmp/$label.ss" 2>&1
    sleep 1
    cat /proc/"$pid"/status >"$root/tmp/$label.status" 2>/dev/null
    kill -TERM "$pid"
  fi
  wait "$pid" 2>/dev/null
}
setpriv_caps=$(echo "$user_caps" | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')
run_as_unit all "$setpriv_caps"
check "as the unit: ready" grep -q "ready: SIGHUP" "$root/tmp/all.log"
check "as the unit: runs as chainboot" sh -c "grep -E '^Uid:' '$root/tmp/all.status' | grep -qw $(chroot "$root" id -u chainboot)"
check "as the unit: no new privileges" grep -qE '^NoNewPrivs:\s+1' "$root/tmp/all.status"
check "as the unit: effective capabilities are net_bind_service, net_admin, net_raw only" \
  grep -qE '^CapEff:\s+0000000000003400' "$root/tmp/all.status"
check "as the unit: a router solicitation gets an advertisement" grep -q "Router lifetime *: *0" "$root/tmp/all.rdisc6"
check "as the unit: a DHCP client gets an address" grep -q "lease of 198.18.0.1" "$root/tmp/all.udhcpc"
check "as the unit: no SIOCSARP failure" sh -c "! grep -q 'SIOCSARP' '$root/tmp/all.log'"
check "as the unit: DHCP receive buffer of 4 MiB" grep -q "rb8388608" "$root/tmp/all.ss"
# Each capability taken away: what breaks shows why the unit has it.
without() { echo "$setpriv_caps" | tr ',' '\n' | grep -v "^+$1\$" | paste -sd, -; }
run_as_unit no-bind "$(without net_bind_service)"
check "without CAP_NET_BIND_SERVICE: port 67 refused" grep -qi "permission denied" "$root/tmp/no-bind.log"
run_as_unit no-raw "$(without net_raw)"
check "without CAP_NET_RAW: no router advertisements" grep -q "not answering IPv6 router solicitations" "$root/tmp/no-raw.log"
check "without CAP_NET_RAW: a router solicitation goes unanswered" sh -c "! grep -q 'Router lifetime' '$root/tmp/no-raw.rdisc6'"
run_as_unit no-admin "$(without net_admin)"
check "without CAP_NET_ADMIN: SIOCSARP refused" grep -q "SIOCSARP" "$root/tmp/no-admin.log"
umount "$root/proc"

# ---- the unit under systemd, booting a VM ----
out=$(mktemp)
bash "$here/boot-through-unit.sh" "$root" 2>"$out.err" | tee "$out"
rc=${PIPESTATUS[0]}
passed=$((passed + $(grep -c '^PASS' "$out")))
failed=$((failed + $(grep -c '^FAIL' "$out")))
if [ "$rc" != 0 ] && ! grep -q '^FAIL' "$out"; then
  bad "booting through the unit: $(tail -5 "$out.err")"
fi
rm -f "$out" "$out.err"

# ---- purge ----
mkdir -p "$root/var/lib/chainboot" && touch "$root/var/lib/chainboot/leases.db"
if chroot "$root" dpkg --purge chainboot >"$root/tmp/purge.log" 2>&1; then
  ok "dpkg --purge"
else
  bad "dpkg --purge"; cat "$root/tmp/purge.log"
fi
check "purge removes the state directory" test ! -e "$root/var/lib/chainboot"
check "purge removes the config" test ! -e "$root/etc/chainboot/chainboot.toml"
check "purge removes the unit" test ! -e "$root/usr/lib/systemd/system/chainboot.service"
finish
