# e2e/lib.sh — the harness: a private network namespace, a bridge, QEMU VMs, cleanup, diagnostics.
# Sourced by the scenario scripts (e2e/scenarios/*.sh). Bash only; needs root (netns, taps).
#
# Network safety: everything runs inside namespaces created here (unique names with our PID), on
# addresses in 198.18.0.0/24 and 2001:db8:1::/64; nothing touches the host's interfaces. Every process we start is
# recorded by PID and killed by PID on every exit path (trap), then the namespaces are deleted.
#
# Topology:   ns $E2E_NS:  br0 198.18.0.1/24 and/or 2001:db8:1::1/64 (the boot server side,
#             E2E_FAMILY) + tap<N> per VM
#             optional ns $E2E_NS-<peer>: a veth into br0 (e.g. the plain DHCP server of "proxy")
# Tunables (environment): E2E_VM_TIMEOUT (s, default 240), E2E_MEM (MiB, default 512),
#   E2E_NIC (virtio-net-pci | e1000 (BIOS only), default virtio-net-pci), E2E_KEEP=1 keeps the
#   run dir (else removed on success), E2E_RESULTS=FILE collects result lines (bench/boot),
#   E2E_RA=1 starts radvd (router advertisement, M/O clear, router lifetime 0, no prefix),
#   E2E_OVMF_DIR holds the OVMF images of uefi VMs (default /usr/share/OVMF),
#   E2E_QEMU_EXTRA (array) is appended to every VM's QEMU command line (e.g. OVMF's fw_cfg knobs),
#   E2E_FAMILY: v4 (default: br0 has 198.18.0.1 only), v6 (IPv6 only: br0 has 2001:db8:1::1/64
#   and no IPv4 address; VMs get a -uuid; the marker must name a DHCPv6 address) or dual (both).

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E_REPO=$(cd "$E2E_DIR/.." && pwd)
E2E_SERVER_IP=198.18.0.1
E2E_SERVER_IP6=2001:db8:1::1
E2E_PREFIX6=2001:db8:1::/64
E2E_FAMILY=${E2E_FAMILY:-v4}
E2E_VM_TIMEOUT=${E2E_VM_TIMEOUT:-240}
E2E_MEM=${E2E_MEM:-512}
E2E_NIC=${E2E_NIC:-virtio-net-pci}
E2E_PIDS=()
declare -A E2E_FW=()
E2E_NSES=()
E2E_FAILED=0

e2e_log() { echo "[$(date +%H:%M:%S)] ${E2E_NAME:-e2e}: $*" >&2; }
e2e_die() { e2e_log "ERROR: $*"; E2E_FAILED=1; exit 1; }

# Tools a scenario needs must exist: a missing one fails the run with the package to install.
e2e_require() {
  local tool pkg
  for tool in "$@"; do
    pkg=${tool#*:}; tool=${tool%%:*}
    command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] \
      || e2e_die "missing '$tool' (Debian package $pkg; run: bash .ci/install-deps)"
  done
}

# e2e_init NAME: run dir, namespace name, traps. Call once per scenario process.
e2e_init() {
  E2E_NAME=$1
  [ "$(id -u)" = 0 ] || e2e_die "must run as root (network namespaces, tap devices)"
  e2e_require ip:iproute2 qemu-system-x86_64:qemu-system-x86 tcpdump:tcpdump
  E2E_NS="cbe2e-$$"
  local runs=${E2E_RUNS:-$E2E_DIR/.cache/runs}
  mkdir -p "$runs"
  # Failed runs are kept for diagnosis; drop those older than a day (never a running one).
  find "$runs" -mindepth 1 -maxdepth 1 -type d -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
  E2E_RUN="$runs/$E2E_NAME.$(date +%Y%m%d-%H%M%S).$$"
  mkdir -p "$E2E_RUN"
  E2E_TOKEN=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
  trap 'e2e_cleanup' EXIT
  trap 'E2E_FAILED=1; exit 130' INT
  trap 'E2E_FAILED=1; exit 143' TERM
  E2E_CACHE=$("$E2E_DIR/assets.sh") || e2e_die "building the guest assets failed"
}

# Kills what we started (by PID, newest first), deletes our namespaces, keeps the run dir on failure.
e2e_cleanup() {
  local rc=$? i pid n
  [ $rc -ne 0 ] && E2E_FAILED=1
  for ((i = ${#E2E_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${E2E_PIDS[$i]}
    kill -TERM "$pid" 2>/dev/null || continue
  done
  for ((i = ${#E2E_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${E2E_PIDS[$i]}
    for ((n = 0; n < 30; n++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  e2e_postgres_stop
  for ((i = ${#E2E_NSES[@]} - 1; i >= 0; i--)); do
    ip netns del "${E2E_NSES[$i]}" 2>/dev/null || true
  done
  if [ -n "${E2E_RUN:-}" ] && [ -d "$E2E_RUN" ]; then
    if [ "$E2E_FAILED" = 1 ] || [ "${E2E_KEEP:-0}" = 1 ]; then
      e2e_log "run dir kept: $E2E_RUN (serial logs, server logs, bridge.pcap)"
    else
      rm -rf "$E2E_RUN"
    fi
  fi
  return $rc
}

e2e_ns() { ip netns exec "$E2E_NS" "$@"; }

# e2e_spawn LABEL CMD...: run CMD in the namespace in the background, output to $E2E_RUN/LABEL.log.
# `ip netns exec` execs the command, so $! is the server's own PID.
e2e_spawn() {
  local label=$1; shift
  ip netns exec "$E2E_NS" "$@" >"$E2E_RUN/$label.log" 2>&1 </dev/null &
  E2E_PIDS+=($!)
  eval "E2E_PID_${label//[^A-Za-z0-9_]/_}=$!"
}

# e2e_spawn_in NS LABEL CMD...: same, in another namespace of ours.
e2e_spawn_in() {
  local ns=$1 label=$2; shift 2
  ip netns exec "$ns" "$@" >"$E2E_RUN/$label.log" 2>&1 </dev/null &
  E2E_PIDS+=($!)
  eval "E2E_PID_${label//[^A-Za-z0-9_]/_}=$!"
}

# e2e_postgres: a throw-away PostgreSQL cluster (Debian's postgresql package: initdb and pg_ctl
# run as the `postgres` user, which refuses root) in a directory under /tmp (that user cannot
# reach the run dir in the source tree), listening on its unix socket only: every namespace
# sees the socket file, and nothing listens on any network. Database and role `chainboot`,
# trusted on the socket. Sets E2E_PG_URL; stopped (immediate) and removed by e2e_cleanup.
e2e_postgres() {
  e2e_require runuser:util-linux
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$bin" ] && [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] \
    || e2e_die "missing the PostgreSQL server binaries under /usr/lib/postgresql/*/bin (Debian package postgresql; run: bash .ci/install-deps)"
  E2E_PG_BIN=$bin
  E2E_PG_DIR=$(mktemp -d /tmp/cbe2e-pg.XXXXXX) || e2e_die "cannot make the cluster's directory"
  chown postgres: "$E2E_PG_DIR" || e2e_die "cannot give $E2E_PG_DIR to the postgres user"
  runuser -u postgres -- "$bin/initdb" -D "$E2E_PG_DIR/data" -U chainboot --auth-local=trust \
    -E UTF8 --no-sync >"$E2E_RUN/postgres-initdb.log" 2>&1 \
    || { tail -n 20 "$E2E_RUN/postgres-initdb.log" >&2; e2e_die "initdb failed"; }
  runuser -u postgres -- "$bin/pg_ctl" -D "$E2E_PG_DIR/data" -l "$E2E_PG_DIR/log" \
    -o "-k $E2E_PG_DIR -p 5432 -c listen_addresses=''" -w -t 60 start >/dev/null 2>&1 \
    || { tail -n 20 "$E2E_PG_DIR/log" >&2; e2e_die "PostgreSQL did not start"; }
  e2e_psql postgres "CREATE DATABASE chainboot" >/dev/null || e2e_die "cannot create the database"
  E2E_PG_URL="host=$E2E_PG_DIR port=5432 user=chainboot dbname=chainboot"
  e2e_log "PostgreSQL $(basename "$(dirname "$bin")") on $E2E_PG_DIR (unix socket only)"
}

# e2e_psql DB SQL: runs SQL in the throw-away cluster; its rows, unaligned.
e2e_psql() {
  runuser -u postgres -- "$E2E_PG_BIN/psql" -h "$E2E_PG_DIR" -p 5432 -U chainboot -d "$1" \
    -v ON_ERROR_STOP=1 -Atc "$2"
}

# Stops the cluster at once (its postmaster is pg_ctl's daemon, not one of E2E_PIDS) and
# removes its directory.
e2e_postgres_stop() {
  [ -n "${E2E_PG_DIR:-}" ] && [ -d "$E2E_PG_DIR" ] || return 0
  if [ -f "$E2E_PG_DIR/data/postmaster.pid" ]; then
    runuser -u postgres -- "$E2E_PG_BIN/pg_ctl" -D "$E2E_PG_DIR/data" -m immediate -w stop \
      >/dev/null 2>&1 || {
      local pm
      pm=$(head -1 "$E2E_PG_DIR/data/postmaster.pid" 2>/dev/null)
      [ -n "$pm" ] && kill -KILL "$pm" 2>/dev/null
    }
  fi
  rm -rf "$E2E_PG_DIR"
}

e2e_topology() {
  ip netns add "$E2E_NS" || e2e_die "cannot create network namespace $E2E_NS"
  E2E_NSES+=("$E2E_NS")
  e2e_ns ip link set lo up
  e2e_ns ip link add br0 type bridge
  # No STP/forward delay: ports forward at once (firmware DHCPs immediately after link up).
  e2e_ns ip link set br0 type bridge stp_state 0 forward_delay 0
  case $E2E_FAMILY in
    v4 | dual) e2e_ns ip addr add "$E2E_SERVER_IP/24" dev br0 ;;
    v6) ;;
    *) e2e_die "E2E_FAMILY must be v4, v6 or dual" ;;
  esac
  if [ "$E2E_FAMILY" != v4 ]; then
    # No duplicate address detection on the bridge: its addresses are usable at once (servers
    # bind to them right away), and nothing else on this private link can hold them.
    e2e_ns sysctl -qw net.ipv6.conf.br0.disable_ipv6=0 net.ipv6.conf.br0.accept_dad=0
    e2e_ns ip -6 addr add "$E2E_SERVER_IP6/64" dev br0 nodad
  fi
  e2e_ns ip link set br0 up
  # The bridge only gets carrier (and its IPv6 link-local, which radvd needs) with a port up;
  # an always-up veth stub gives it one before any VM starts.
  e2e_ns ip link add stub0 type veth peer name stub1
  e2e_ns ip link set stub0 master br0
  e2e_ns ip link set stub0 up
  e2e_ns ip link set stub1 up
  e2e_spawn tcpdump tcpdump -i br0 -U -n -s 0 -w "$E2E_RUN/bridge.pcap"
  # Wait (bounded) until the bridge addresses are usable so servers can bind to them (and,
  # for IPv6, until br0 has its link-local address: router advertisements come from it).
  local n
  for ((n = 0; n < 50; n++)); do
    case $E2E_FAMILY in
      v4) e2e_ns ip -4 addr show dev br0 | grep -q "$E2E_SERVER_IP" && break ;;
      *) e2e_ns ip -6 addr show dev br0 scope link | grep -v tentative | grep -q 'inet6 fe80' \
        && e2e_ns ip -6 addr show dev br0 | grep -q "$E2E_SERVER_IP6/" && break ;;
    esac
    sleep 0.1
  done
}

# e2e_drop_from LABEL MATCH...: frames from the VM behind tap LABEL that match the nftables
# bridge-family MATCH are dropped at its bridge port (e.g. its TFTP requests, so that a boot
# option fails on purpose).
e2e_drop_from() {
  local tap="tap$1"
  shift
  e2e_require nft:nftables
  e2e_ns nft -f - <<EOF || e2e_die "cannot install the bridge filter for $tap"
table bridge e2e_drop {
  chain input { type filter hook input priority 0; policy accept; }
}
add rule bridge e2e_drop input iifname "$tap" $* drop
EOF
}

# e2e_family_only LABEL FAMILY: the VM behind tap LABEL speaks only FAMILY (v4 or v6) on the
# bridge: frames of the other family (and ARP, for v6) to and from its tap are dropped. Lets one
# VM on a dual-stack segment boot once over each family.
e2e_family_only() {
  local tap="tap$1" family=$2 types
  case $family in
    v4) types="ip6" ;;
    v6) types="{ ip, arp }" ;;
    *) e2e_die "e2e_family_only: family must be v4 or v6" ;;
  esac
  e2e_require nft:nftables
  e2e_ns nft -f - <<EOF || e2e_die "cannot install the bridge filter for $tap"
table bridge e2e_family {
  chain input { type filter hook input priority 0; policy accept; }
  chain forward { type filter hook forward priority 0; policy accept; }
  chain output { type filter hook output priority 0; policy accept; }
}
add rule bridge e2e_family input iifname "$tap" ether type $types drop
add rule bridge e2e_family forward iifname "$tap" ether type $types drop
add rule bridge e2e_family forward oifname "$tap" ether type $types drop
add rule bridge e2e_family output oifname "$tap" ether type $types drop
EOF
}

# e2e_peer NAME IP: a second namespace on the bridge via a veth (another host on the segment).
# Sets E2E_PEER_NS.
e2e_peer() {
  local name=$1 addr=$2
  E2E_PEER_NS="$E2E_NS-$name"
  ip netns add "$E2E_PEER_NS" || e2e_die "cannot create namespace $E2E_PEER_NS"
  E2E_NSES+=("$E2E_PEER_NS")
  e2e_ns ip link add "v$name" type veth peer name eth0 netns "$E2E_PEER_NS"
  e2e_ns ip link set "v$name" master br0
  e2e_ns ip link set "v$name" up
  ip netns exec "$E2E_PEER_NS" ip link set lo up
  ip netns exec "$E2E_PEER_NS" ip addr add "$addr/24" dev eth0
  ip netns exec "$E2E_PEER_NS" ip link set eth0 up
}

# e2e_radvd: router advertisements on br0 that end iPXE's IPv6 wait without configuring anything:
# M and O clear (no DHCPv6), router lifetime 0 (not a default router), no prefix (no address).
e2e_radvd() {
  e2e_require radvd:radvd
  cat >"$E2E_RUN/radvd.conf" <<EOF
interface br0 {
  AdvSendAdvert on;
  AdvManagedFlag off;
  AdvOtherConfigFlag off;
  AdvDefaultLifetime 0;
  MinRtrAdvInterval 30;
  MaxRtrAdvInterval 60;
};
EOF
  e2e_spawn radvd radvd -n -d 1 -m stderr -C "$E2E_RUN/radvd.conf" -p "$E2E_RUN/radvd.pid"
}

# e2e_vm_start LABEL FIRMWARE MAC [UUID]: FIRMWARE is bios (SeaBIOS + the iPXE NIC ROM of ipxe-qemu) or
# uefi (OVMF, NIC option ROM disabled so OVMF's own PXE stack boots: arch 7, no iPXE), uefi-sb
# (the same with Secure Boot on, Microsoft's keys) or uefi-sb-own (Secure Boot on, OVMF's snakeoil
# keys standing for a site's own). UUID is the SMBIOS UUID (-uuid); on IPv6 networks every VM
# gets one (from its MAC) unless given: the firmware's DHCPv6 DUID is made from it, and without
# one iPXE's DUID is all zeros for every VM.
e2e_vm_start() {
  local label=$1 fw=$2 mac=$3 uuid=${4:-} uuidargs=()
  if [ -z "$uuid" ] && [ "$E2E_FAMILY" != v4 ]; then
    uuid="e2e0e2e0-0000-4000-8000-${mac//:/}"
  fi
  [ -n "$uuid" ] && uuidargs=(-uuid "$uuid")
  local tap="tap$label" dev rom fwargs=() machine=pc
  e2e_ns ip tuntap add dev "$tap" mode tap || e2e_die "cannot create $tap"
  e2e_ns ip link set "$tap" master br0
  e2e_ns ip link set "$tap" up
  local nic=$E2E_NIC
  case $E2E_NIC in
    # ipxe-qemu's pxe-virtio.rom declares PCI id 1af4:1041 (virtio 1.0 network device); QEMU's
    # default transitional device is 1af4:1000 and SeaBIOS silently skips a ROM whose id does not
    # match, so the VM never netboots. disable-legacy=on makes the device 1041 (Linux and OVMF
    # drive it as well).
    virtio-net-pci) rom=/usr/lib/ipxe/qemu/pxe-virtio.rom nic="virtio-net-pci,disable-legacy=on" ;;
    e1000) rom=/usr/lib/ipxe/qemu/pxe-e1000.rom ;;
    *) e2e_die "E2E_NIC must be virtio-net-pci or e1000" ;;
  esac
  case $fw in
    bios)
      [ -f "$rom" ] || e2e_die "missing $rom (package ipxe-qemu)"
      dev="$nic,netdev=n0,mac=$mac,romfile=$rom"
      ;;
    uefi)
      # OVMF brings a virtio-net driver but none for e1000 (that one lives in the NIC's ROM,
      # which this scenario disables on purpose).
      [ "$E2E_NIC" = virtio-net-pci ] || e2e_die "UEFI VMs need E2E_NIC=virtio-net-pci (OVMF has no e1000 driver)"
      local code=${E2E_OVMF_DIR:-/usr/share/OVMF}/OVMF_CODE_4M.fd vars=${E2E_OVMF_DIR:-/usr/share/OVMF}/OVMF_VARS_4M.fd
      [ -f "$code" ] && [ -f "$vars" ] || e2e_die "missing $code or $vars (package ovmf)"
      cp "$vars" "$E2E_RUN/$label.vars.fd"
      fwargs=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$code"
        -drive "if=pflash,format=raw,unit=1,file=$E2E_RUN/$label.vars.fd")
      dev="$nic,netdev=n0,mac=$mac,romfile="
      ;;
    uefi-sb | uefi-sb-own)
      # OVMF built with Secure Boot, SMM-protected variables (q35 + SMM + secure pflash, else
      # the secboot build refuses to start), and variables with Secure Boot on: Microsoft's keys
      # (uefi-sb) or OVMF's snakeoil test keys (uefi-sb-own: a site's own keys).
      [ "$E2E_NIC" = virtio-net-pci ] || e2e_die "UEFI VMs need E2E_NIC=virtio-net-pci (OVMF has no e1000 driver)"
      local code=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd vars=/usr/share/OVMF/OVMF_VARS_4M.ms.fd
      [ "$fw" = uefi-sb-own ] && vars=/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd
      [ -f "$code" ] && [ -f "$vars" ] || e2e_die "missing $code or $vars (package ovmf)"
      cp "$vars" "$E2E_RUN/$label.vars.fd"
      machine=q35,smm=on
      fwargs=(-global driver=cfi.pflash01,property=secure,value=on
        -drive "if=pflash,format=raw,unit=0,readonly=on,file=$code"
        -drive "if=pflash,format=raw,unit=1,file=$E2E_RUN/$label.vars.fd")
      dev="$nic,netdev=n0,mac=$mac,romfile="
      ;;
    *) e2e_die "firmware must be bios, uefi, uefi-sb or uefi-sb-own" ;;
  esac
  E2E_FW[$label]=$fw
  : >"$E2E_RUN/$label.serial"
  date +%s.%N >"$E2E_RUN/$label.start"
  # timeout(1) is the hard stop even if this shell dies; the wait loop below normally ends first.
  e2e_spawn "$label.qemu" timeout -k 5 $((E2E_VM_TIMEOUT + 30)) \
    qemu-system-x86_64 -machine "$machine" -accel tcg -m "$E2E_MEM" -smp 1 \
    "${fwargs[@]}" ${uuidargs[@]+"${uuidargs[@]}"} ${E2E_QEMU_EXTRA[@]+"${E2E_QEMU_EXTRA[@]}"} -boot n -nographic -monitor none -no-reboot \
    -serial "file:$E2E_RUN/$label.serial" \
    -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" -device "$dev"
  eval "E2E_VMPID_$label=\$!"
}

# Milestones seen on the serial console, for "where a boot's seconds go" (first sighting, 0.2 s
# resolution). The PXE/iPXE strings are those of OVMF 2022.11 and iPXE 1.0.0+git-20190125.
E2E_MILESTONES=(
  "pxe|>>Start PXE over IPv4"
  "pxe6|>>Start PXE over IPv6"
  "http6|>>Start HTTP Boot over IPv6"
  "ipxe|iPXE initialising devices"
  "configuring|Configuring (net0"
  "script|boot.ipxe"
  "linux|Linux version"
  "marker|CHAINBOOT-MARKER"
)

# SeaBIOS after every boot device failed; OVMF falling back to its shell/setup; a dead kernel;
# chainboot's own failure script (it retries forever, so the first failure is the verdict);
# PXELINUX without its ldlinux.c32 or giving up.
E2E_DEAD_ENDS='No bootable device|Shell> |UEFI Interactive Shell|Kernel panic|chainboot: booting profile [^ ]+ failed|Failed to load ldlinux.c32|Boot failed: press a key to retry'

# e2e_vm_wait LABEL:MAC...: waits (bounded, E2E_VM_TIMEOUT from each VM's start) for every VM's
# marker, polling all of them in one loop so concurrent VMs get accurate milestone times; checks
# token, MAC and address; writes $E2E_RUN/LABEL.result. Returns 0 only if every VM passed.
e2e_vm_wait() {
  local spec label mac serial now m key pat pid rc=0 pending=("$@")
  declare -A seen=() status=() start=()
  for spec in "$@"; do
    label=${spec%%:*}
    start[$label]=$(cat "$E2E_RUN/$label.start")
  done
  local deadline=$(($(date +%s) + E2E_VM_TIMEOUT))
  while [ ${#pending[@]} -gt 0 ] && [ "$(date +%s)" -lt "$deadline" ]; do
    now=$(date +%s.%N)
    local still=()
    for spec in "${pending[@]}"; do
      label=${spec%%:*}
      serial="$E2E_RUN/$label.serial"
      for m in "${E2E_MILESTONES[@]}"; do
        key=${m%%|*}; pat=${m#*|}
        [ -n "${seen[$label.$key]:-}" ] && continue
        grep -aqF -- "$pat" "$serial" \
          && seen[$label.$key]=$(awk -v a="$now" -v b="${start[$label]}" 'BEGIN{printf "%.1f", a-b}')
      done
      eval "pid=\$E2E_VMPID_$label"
      if [ -n "${seen[$label.marker]:-}" ]; then
        status[$label]=marker
      elif grep -aqE "$E2E_DEAD_ENDS" "$serial"; then
        # Dead end: fail now instead of at the timeout (the firmware gave up on the network).
        status[$label]="dead end: $(grep -aoE "$E2E_DEAD_ENDS" "$serial" | head -1)"
      elif ! kill -0 "$pid" 2>/dev/null; then
        status[$label]="QEMU exited"
      else
        still+=("$spec")
      fi
    done
    pending=("${still[@]}")
    [ ${#pending[@]} -gt 0 ] && sleep 0.2
  done
  for spec in "$@"; do
    label=${spec%%:*} mac=${spec#*:}
    e2e_vm_check "$label" "$mac" "${status[$label]:-timeout}" || rc=1
  done
  return $rc
}

# The address the booted OS must report: E2E_MARKER_IP (a regex), else by family: from the DHCPv4
# pool (v4, dual), or from the DHCPv6 pool 2001:db8:1::100-1ff (v6: iPXE's lease, passed on the
# kernel command line, see servers.sh).
e2e_marker_ip() {
  if [ -n "${E2E_MARKER_IP:-}" ]; then
    echo "$E2E_MARKER_IP"
  elif [ "$E2E_FAMILY" = v6 ]; then
    echo '2001:db8:1::1[0-9a-f]{2}'
  else
    echo '198\.18\.0\.[0-9]+'
  fi
}

# e2e_vm_check LABEL MAC STATUS (uses `seen` and `start` of the caller): verdict, result file, log.
e2e_vm_check() {
  local label=$1 mac=$2 st=$3 m key line elapsed times="" ok=0 why=""
  elapsed=${seen[$label.marker]:-$(awk -v a="$(date +%s.%N)" -v b="${start[$label]}" 'BEGIN{printf "%.1f", a-b}')}
  for m in "${E2E_MILESTONES[@]}"; do
    key=${m%%|*}
    [ -n "${seen[$label.$key]:-}" ] && times+=" $key=${seen[$label.$key]}"
  done
  line=$(grep -a 'CHAINBOOT-MARKER' "$E2E_RUN/$label.serial" | tr -d '\r' | head -1)
  if [ "$st" != marker ]; then
    why="no marker ($st after ${elapsed}s)"
  elif ! grep -q "token=$E2E_TOKEN " <<<"$line"; then
    why="marker with wrong token: $line"
  elif ! grep -qi "mac=$mac " <<<"$line"; then
    why="marker with wrong MAC: $line"
  elif ! grep -qE "ip=$(e2e_marker_ip)\$" <<<"$line"; then
    why="marker without an address matching $(e2e_marker_ip): $line"
  else
    ok=1
  fi
  echo "label=$label ok=$ok seconds=$elapsed$times" >"$E2E_RUN/$label.result"
  # Benchmarks collect every VM's result line here (bench/boot/run.sh).
  if [ -n "${E2E_RESULTS:-}" ]; then
    echo "scenario=$E2E_NAME fw=${E2E_FW[$label]:-?} label=$label ok=$ok seconds=$elapsed$times" >>"$E2E_RESULTS"
  fi
  if [ $ok = 1 ]; then
    e2e_log "$label: marker after ${elapsed}s ($line);$times"
    return 0
  fi
  e2e_log "$label: FAILED: $why"
  e2e_log "$label: milestones:$times"
  e2e_diagnose "$label" "$mac"
  return 1
}

# Serial tail of the VM, the server logs (lines for this MAC first), and where the pcap is.
e2e_diagnose() {
  local label=$1 mac=$2 f
  E2E_FAILED=1
  echo "----- $label serial tail ($E2E_RUN/$label.serial) -----" >&2
  # iPXE and OVMF paint the console with ANSI sequences; strip them for a readable tail.
  sed -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\r/\n/g' "$E2E_RUN/$label.serial" | grep -av '^\s*$' \
    | tail -n 40 >&2
  for f in "$E2E_RUN"/*.log; do
    [ -s "$f" ] || continue
    case $f in *tcpdump.log | *qemu.log) continue ;; esac
    echo "----- $(basename "$f"): lines for $mac (else tail) -----" >&2
    if grep -qi -- "$mac" "$f"; then grep -i -- "$mac" "$f" | tail -n 30 >&2; else tail -n 30 "$f" >&2; fi
  done
  [ -s "$E2E_RUN/$label.qemu.log" ] && { echo "----- qemu -----" >&2; tail -n 10 "$E2E_RUN/$label.qemu.log" >&2; }
  echo "----- bridge capture: $E2E_RUN/bridge.pcap -----" >&2
}

# Stop the capture cleanly (flushes the pcap) before the result is read.
e2e_mac() { printf '52:54:00:e2:e0:%02x' "$1"; }

# e2e_scenario NAME SIDE FIRMWARE FLAVOR [VMS]: the whole scenario: topology, server, VMs booted
# at the same time, each checked for its marker. Exit status 0 only if every VM printed its marker.
# The x86-64 UEFI first stage a side hands out: the recipe's ipxe.efi; chainboot's `[ipxe] efi_x64`
# (snponly.efi, unless E2E_CHAINBOOT_IPXE names ipxe.efi).
e2e_efi_stage() {
  if [ "$1" = anchor ]; then echo ipxe.efi; return; fi
  case ${E2E_CHAINBOOT_IPXE:-} in *'"ipxe.efi"'*) echo ipxe.efi ;; *) echo snponly.efi ;; esac
}

e2e_scenario() {
  local name=$1 side=$2 fw=$3 flavor=$4 vms=${5:-1} i macs=() rc=0
  [ -n "$side" ] || e2e_die "usage: $0 anchor|chainboot"
  e2e_init "$name-$side"
  # shellcheck source=servers.sh
  . "$E2E_DIR/servers.sh"
  e2e_topology
  for ((i = 1; i <= vms; i++)); do macs+=("$(e2e_mac "$i")"); done
  e2e_server_start "$side" "$flavor" "${macs[@]}"
  for ((i = 1; i <= vms; i++)); do e2e_vm_start "vm$i" "$fw" "${macs[$((i - 1))]}"; done
  local specs=()
  for ((i = 1; i <= vms; i++)); do specs+=("vm$i:${macs[$((i - 1))]}"); done
  e2e_vm_wait "${specs[@]}" || rc=1
  E2E_MACS=("${macs[@]}")
  [ $rc = 0 ] || { E2E_FAILED=1; return 1; }
}

# e2e_assert_tftp_once FILE BOOTS: the first-stage binary was fetched exactly BOOTS times (once per
# boot: another fetch would be a chainload loop). Counted in the bridge capture, independent of the
# server: TFTP read requests for FILE, minus requests the client itself aborted (OVMF first sends an
# RRQ with "tsize 0" only to learn the size, then aborts it with ERROR 8 and sends the real RRQ).
# Over IPv6 OVMF names the file with the URL's leading slash ("/ipxe.efi"); both forms count.
e2e_assert_tftp_once() {
  local file=$1 boots=$2 rrq aborted=0 k n pcap="$E2E_RUN/bridge.pcap"
  kill -INT "$E2E_PID_tcpdump" 2>/dev/null || true
  wait "$E2E_PID_tcpdump" 2>/dev/null || true
  rrq=$(tcpdump -r "$pcap" -n 'udp dst port 69' 2>/dev/null | grep -cE "RRQ \"/?${file//./\\.}\"" || true)
  if [ "$E2E_FAMILY" != v6 ]; then
    # TFTP ERROR (opcode 5) from a VM (198.18.0.100-200) to the server's transfer port.
    k=$(tcpdump -r "$pcap" -n "udp and dst host $E2E_SERVER_IP and not dst port 69 and \
      src net 198.18.0.0/24 and not src host $E2E_SERVER_IP and udp[8:2] = 5" 2>/dev/null | grep -c . || true)
    aborted=$((aborted + k))
  fi
  if [ "$E2E_FAMILY" != v4 ]; then
    # The same over IPv6 (libpcap cannot index udp[] in IPv6 packets; the firmware sends no
    # extension headers, so the TFTP opcode sits right after the 40-byte IPv6 and 8-byte UDP
    # headers).
    k=$(tcpdump -r "$pcap" -n "ip6 and udp and dst host $E2E_SERVER_IP6 and not dst port 69 and \
      not src host $E2E_SERVER_IP6 and ip6[48:2] = 5" 2>/dev/null | grep -c . || true)
    aborted=$((aborted + k))
  fi
  n=$((rrq - aborted))
  if [ "$n" != "$boots" ]; then
    E2E_FAILED=1
    e2e_die "fetches of $file over TFTP: $n ($rrq read requests, $aborted aborted by the client), expected $boots"
  fi
  e2e_log "fetches of $file over TFTP: $n ($rrq read requests, $aborted size probes aborted), expected $boots"
  # And in chainboot's own log: completed transfers of the file (from its log/events).
  if [ -f "$E2E_RUN/chainboot.log" ]; then
    n=$(grep -a 'tftp transfer finished' "$E2E_RUN/chainboot.log" | grep -aE "path=/?${file//./\\.} " \
      | grep -ac 'outcome=completed' || true)
    [ "$n" = "$boots" ] \
      || e2e_die "chainboot's log shows $n completed TFTP transfers of $file, expected $boots"
    e2e_log "chainboot's log: $n completed TFTP transfer(s) of $file"
  fi
}

# e2e_assert_http_fetched PATH: the capture shows an HTTP GET for a path ending in PATH.
e2e_assert_http_fetched() {
  local path=$1
  tcpdump -r "$E2E_RUN/bridge.pcap" -n -A \
    "tcp dst port 80 and (dst host $E2E_SERVER_IP or dst host $E2E_SERVER_IP6)" 2>/dev/null \
    | grep -aE "GET [^ ]*$path HTTP" >/dev/null \
    || e2e_die "no HTTP GET for .../$path in the bridge capture"
  e2e_log "HTTP GET .../$path seen"
}

# Proxy mode: only the plain DHCP server (198.18.0.2) may offer addresses; a DHCP reply from the
# boot server must have yiaddr 0.0.0.0 (PXE spec: proxyDHCP never assigns an address).
e2e_assert_addresses_from_plain_dhcp() {
  local bad
  # BOOTP yiaddr is at UDP payload offset 16.
  bad=$(tcpdump -r "$E2E_RUN/bridge.pcap" -n "udp src port 67 and src host $E2E_SERVER_IP \
    and udp[24:4] != 0" 2>/dev/null | head -3)
  [ -z "$bad" ] || e2e_die "the proxyDHCP server handed out an address: $bad"
  grep -q 'DHCPACK' "$E2E_RUN/dhcp-plain.log" || e2e_die "the plain DHCP server acknowledged nothing"
  e2e_log "addresses only from the plain DHCP server; proxy replies carry yiaddr 0.0.0.0"
}

# e2e_api PATH: GET chainboot's API on its management listener (loopback inside the namespace,
# with the token).
e2e_api() { e2e_api_of "$E2E_NS" "$E2E_RUN/state" "$1"; }

# e2e_api_of NS STATE_DIR PATH: the same for the server in namespace NS whose token is in
# STATE_DIR (the second server of a fleet).
e2e_api_of() {
  ip netns exec "$1" curl -s --max-time 5 \
    -H "Authorization: Bearer $(cat "$2/api.token")" "http://127.0.0.1:8079$3"
}

# e2e_assert_timeline MAC STAGE...: chainboot's own account of the boot (its API) has every STAGE
# in the machine's last boot, and no errors (a healthy boot: OVMF's TFTP size probe, DHCP offers
# and acks are no errors). Only for the chainboot side.
e2e_assert_timeline() {
  local mac=$1 json
  shift
  [ -f "$E2E_RUN/chainboot.log" ] || return 0
  json=$(e2e_api "/api/v1/machines/$mac/timeline") \
    || e2e_die "chainboot's API did not answer for $mac"
  python3 -c '
import json, sys
boots = json.loads(sys.argv[1]).get("boots") or []
last = boots[-1] if boots else {"stages": [], "errors": None}
stages = [s["stage"] for s in last["stages"]]
missing = [s for s in sys.argv[2:] if s not in stages]
if missing:
    sys.exit("lacks stage(s) %s" % " ".join(missing))
if last.get("errors") != 0:
    sys.exit("shows errors: %s (stages with an error: %s)" % (last.get("errors"),
             " ".join(s["stage"] for s in last["stages"] if s["error"]) or "none"))' "$json" "$@" \
    || { e2e_events "$mac"; e2e_die "chainboot's timeline for $mac: $json"; }
  e2e_log "chainboot's timeline for $mac: $*, errors: 0"
}

# A healthy UEFI boot never looks like a Secure Boot refusal to chainboot (iPXE asked DHCP after
# the first stage's download; nothing the firmware did after it counts as being back at DHCP).
e2e_assert_no_secure_boot_refusal() {
  if grep -aq 'first stage refused by the firmware' "$E2E_RUN/chainboot.log" 2>/dev/null; then
    e2e_die "a healthy UEFI boot was taken for a Secure Boot refusal"
  fi
}

# The machine's events as chainboot recorded them (for a failing timeline assertion).
e2e_events() {
  e2e_api "/api/v1/events?mac=$1&limit=50" >&2 || true
  echo >&2
}

# e2e_wait_timeline_error MAC STAGE: waits (E2E_VM_TIMEOUT) until the machine's last boot in
# chainboot's timeline counts at least one error and STAGE is its only stage with an error (a boot
# made to fail must say so, and where).
e2e_wait_timeline_error() {
  local mac=$1 stage=$2 json deadline=$(($(date +%s) + E2E_VM_TIMEOUT))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    json=$(e2e_api "/api/v1/machines/$mac/timeline" || true)
    if python3 -c '
import json, sys
try:
    boots = json.loads(sys.argv[1]).get("boots") or []
except ValueError:
    sys.exit(1)
last = boots[-1] if boots else {"stages": [], "errors": 0}
bad = [s["stage"] for s in last["stages"] if s["error"]]
sys.exit(0 if last["errors"] >= 1 and bad == [sys.argv[2]] else 1)' "$json" "$stage"; then
      e2e_log "chainboot's timeline for $mac shows the failure at $stage: $json"
      return 0
    fi
    sleep 2
  done
  e2e_events "$mac"
  e2e_die "chainboot's timeline for $mac never showed an error at $stage alone: ${json:-no answer}"
}
