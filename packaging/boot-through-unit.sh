#!/usr/bin/env bash
# The installed package's unit, started by systemd itself (booted in a container on a
# private boot network), boots a BIOS VM (the e2e harness: SeaBIOS + iPXE ROM, kernel and
# initrd over HTTP, a marker line with the run's token). Then, from inside the container:
# the service's user, capabilities, no-new-privileges and seccomp as the kernel reports them,
# its view of the file system (ProtectSystem, ProtectHome, PrivateTmp), its log in the
# journal, and a reload (ExecReload = SIGHUP). Prints PASS/FAIL lines.
# Usage: packaging/boot-through-unit.sh ROOT   (a Debian root with the package installed;
# called by packaging/test-deb.sh). Network safety: the e2e harness's namespace, removed on exit.
set -uo pipefail
root=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../e2e/lib.sh"
. "$here/../e2e/servers.sh"
failures=0
ok() { echo "PASS $*"; }
bad() { echo "FAIL $*"; failures=$((failures + 1)); }

e2e_init packaged-unit
e2e_require systemd-nspawn:systemd-container nsenter:util-linux
e2e_topology
mkdir -p "$root/srv/boot"
cp "$E2E_CACHE/vmlinuz" "$E2E_CACHE/initrd.img" "$root/srv/boot/"
rm -rf "$root/var/lib/chainboot"
mac=$(e2e_mac 1)
cat >"$root/etc/chainboot/chainboot.toml" <<TOML
[server]
interfaces = ["br0"]
[dhcp]
mode = "server"
[[dhcp.subnet]]
cidr = "198.18.0.0/24"
pools = [["198.18.0.100", "198.18.0.200"]]
router = "$E2E_SERVER_IP"
[http]
root = "/srv/boot"
[[profile]]
name = "e2e"
kernel = "vmlinuz"
initrd = ["initrd.img"]
cmdline = "$(e2e_cmdline)"
[boot]
default = "e2e"
TOML
chroot "$root" systemctl enable chainboot >/dev/null 2>&1 || e2e_die "systemctl enable chainboot failed"

# systemd as the container's init, in the boot network's namespace (no private network).
# This host's cgroup layout needs the unified hierarchy; nothing is registered with a
# machine manager (there is none here).
# (Not through `ip netns exec`, whose fresh /sys hides the cgroup mounts nspawn needs.
# CAP_NET_ADMIN: nspawn keeps it from a container that shares the host's network otherwise.)
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --boot --directory="$root" \
  --network-namespace-path="/run/netns/$E2E_NS" --register=no --keep-unit \
  --console=read-only --machine="cbpkg$$" --capability=CAP_NET_ADMIN >"$E2E_RUN/nspawn.log" 2>&1 </dev/null &
E2E_PID_nspawn=$!
E2E_PIDS+=("$E2E_PID_nspawn")
leader=""
for ((n = 0; n < 100; n++)); do
  for c in $(cat /proc/"$E2E_PID_nspawn"/task/*/children 2>/dev/null); do
    [ "$(cat /proc/"$c"/comm 2>/dev/null)" = systemd ] && leader=$c
  done
  [ -n "$leader" ] && break
  sleep 0.2
done
[ -n "$leader" ] || e2e_die "the container's systemd did not start: $(tail -5 "$E2E_RUN/nspawn.log")"
inside() { nsenter --target "$leader" --mount --uts --ipc --net --pid -- "$@"; }
state=""
for ((n = 0; n < 300; n++)); do
  state=$(inside systemctl is-active chainboot 2>/dev/null)
  case $state in active | failed) break ;; esac
  sleep 0.2
done
if [ "$state" = active ]; then
  ok "systemd started chainboot.service (Type=notify: active once ready)"
else
  bad "chainboot.service is '$state'"
  inside journalctl -u chainboot --no-pager | tail -20
  e2e_die "the unit did not start"
fi

e2e_vm_start vm1 bios "$mac"
if e2e_vm_wait "vm1:$mac"; then
  ok "a BIOS VM netbooted through the unit (marker with token, MAC, address)"
else
  bad "the BIOS VM did not boot through the unit"
fi

pid=$(inside systemctl show chainboot -p MainPID --value)
status=$(inside cat /proc/"$pid"/status)
uid=$(chroot "$root" id -u chainboot)
grep -qE "^Uid:\s+$uid\s" <<<"$status" && ok "the service runs as chainboot (uid $uid)" || bad "Uid: $(grep ^Uid <<<"$status")"
grep -qE '^CapEff:\s+0000000000003400$' <<<"$status" \
  && ok "effective capabilities: net_bind_service, net_admin, net_raw" || bad "$(grep ^CapEff <<<"$status")"
grep -qE '^CapBnd:\s+0000000000003400$' <<<"$status" \
  && ok "bounding set: the same three" || bad "$(grep ^CapBnd <<<"$status")"
grep -qE '^NoNewPrivs:\s+1$' <<<"$status" && ok "NoNewPrivileges" || bad "$(grep ^NoNewPrivs <<<"$status")"
grep -qE '^Seccomp:\s+2$' <<<"$status" \
  && ok "seccomp filter on (SystemCallFilter, RestrictAddressFamilies, ...)" || bad "$(grep ^Seccomp <<<"$status")"
# The service's own mount namespace ($pid is the container's number for it).
view() { inside nsenter --target "$pid" --mount -- "$@"; }
grep -qE '^Umask:\s+0077$' <<<"$status" && ok "UMask=0077" || bad "$(grep ^Umask <<<"$status")"
# LimitNOFILE=65536, as far as the container's own hard limit allows (systemd there cannot
# raise it; without the line the service would keep systemd's soft default of 1024).
cap=$(inside cat /proc/1/limits | awk '/^Max open files/ {print $5}')
want=$(( cap < 65536 ? cap : 65536 ))
inside cat /proc/"$pid"/limits | grep -qE "^Max open files\s+$want\s+$want\s" \
  && ok "LimitNOFILE: $want open files (65536, or the container's hard limit $cap)" \
  || bad "open files: $(inside cat /proc/"$pid"/limits | grep 'open files')"
[ "$(view ls /dev | wc -l)" -lt "$(inside ls /dev | wc -l)" ] \
  && ok "PrivateDevices: fewer device nodes than the container has" || bad "PrivateDevices"
for d in /etc /usr; do
  said=$(view touch "$d/chainboot-probe" 2>&1)
  grep -q "Read-only file system" <<<"$said" \
    && ok "ProtectSystem=strict: $d is read-only for the service" || bad "ProtectSystem: $d: ${said:-writable}"
done
view sh -c 'touch /var/lib/chainboot/probe && rm /var/lib/chainboot/probe' \
  && ok "StateDirectory: /var/lib/chainboot stays writable" || bad "state directory not writable"
[ "$(inside stat -c %i /tmp)" != "$(view stat -c %i /tmp)" ] \
  && ok "PrivateTmp: the service has a /tmp of its own" || bad "PrivateTmp: shared /tmp"
view sh -c 'ls /home 2>&1' | grep -q "Permission denied\|No such file" || [ -z "$(view ls -A /home 2>/dev/null)" ] \
  && ok "ProtectHome: /home is empty or closed to the service" || bad "ProtectHome: /home visible"
perm=$(inside stat -c '%a %U' /var/lib/chainboot/)
[ "$perm" = "700 chainboot" ] && ok "state directory 0700, owned by chainboot" || bad "state directory: $perm"
journal=$(inside journalctl -u chainboot --no-pager -o cat)
grep -q "ready: SIGHUP reloads" <<<"$journal" && ok "logs go to the journal" || bad "no log lines in the journal"
grep -q "answering IPv6 router solicitations" <<<"$journal" \
  && ok "router advertisements on br0 under the unit" || bad "no router advertisements under the unit"
inside systemctl reload chainboot
for ((n = 0; n < 50; n++)); do
  inside journalctl -u chainboot --no-pager -o cat | grep -q "SIGHUP: " && break
  sleep 0.2
done
inside journalctl -u chainboot --no-pager -o cat | grep -q "SIGHUP: " \
  && [ "$(inside systemctl is-active chainboot)" = active ] \
  && ok "systemctl reload: SIGHUP reloads, the service stays active" || bad "reload"
said=$(inside chainboot doctor --config /etc/chainboot/chainboot.toml 2>&1)
if [ $? = 0 ] && grep -q "UDP 0.0.0.0:67 (DHCP) is held by chainboot (pid $pid) (already running)" <<<"$said"; then
  ok "doctor beside the running service: its ports are the service's own, nothing stops a boot"
else
  bad "doctor beside the running service: $said"
fi
echo "systemd-analyze security chainboot: $(inside systemd-analyze security chainboot --no-pager 2>/dev/null | tail -1)"
inside systemctl stop chainboot
[ "$(inside systemctl is-active chainboot)" = inactive ] && ok "systemctl stop" || bad "systemctl stop"
[ "$failures" = 0 ]
