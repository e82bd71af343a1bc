# e2e/servers.sh — the server side of a scenario, sourced after lib.sh.
#   e2e_server_start SIDE FLAVOR MAC...   SIDE: anchor | chainboot;
#   FLAVOR: boot | pxelinux | proxy | grub
# anchor    = the recipe (../shared/seed): dnsmasq for DHCP + TFTP, nginx for HTTP. dnsmasq tells
#             plain PXE firmware to TFTP undionly.kpxe (BIOS) / ipxe.efi (UEFI) and iPXE (user-class
#             "iPXE", exactly the seed's test) to fetch http://198.18.0.1/boot.ipxe. On an
#             IPv6-only bridge (E2E_FAMILY=v6) the same recipe over IPv6: dnsmasq's DHCPv6
#             (stateful, 2001:db8:1::100-1ff), its router advertisements (enable-ra: M flag, the
#             prefix on-link) and its TFTP; nginx on [2001:db8:1::1]:80.
#             With grub: the signed chain by hand, dnsmasq alone (DHCP + TFTP, no nginx: the
#             signed GRUB has no HTTP client) serving Debian's shim and signed GRUB at its TFTP
#             root and a hand-written grub.cfg that loads the same kernel and initrd over TFTP.
# chainboot = target/debug/chainboot (or $CHAINBOOT) `serve --config F` alone, with a config written here.
# proxy     = a plain DHCP server (dnsmasq, no boot options) on a second host 198.18.0.2 hands out
#             the addresses; the boot server answers only as proxyDHCP.
# Every flavor boots the same kernel and initramfs with the run's token on the kernel command line.

E2E_CMDLINE_BASE="console=ttyS0 loglevel=6"

# E2E_SERVED_TOKEN (testing the harness itself): serve another token; the marker check must fail.
# On IPv6 networks the guest has no DHCPv6 client (busybox-static has none), so the address it
# reports is the one iPXE leased over DHCPv6: iPXE expands ${net0.dhcpv6/ip6} in the kernel
# command line (empty when iPXE got no DHCPv6 lease: the guest then asks DHCPv4).
e2e_cmdline() {
  local ip6=""
  [ "$E2E_FAMILY" = v4 ] || ip6=' e2e.ip=${net0.dhcpv6/ip6}'
  echo "$E2E_CMDLINE_BASE e2e.token=${E2E_SERVED_TOKEN:-$E2E_TOKEN}$ip6"
}

# e2e_place SRC DST: a real file at DST (hard link, else copy). Not a symlink: chainboot's
# content root refuses symlinks that leave the root (openat2 RESOLVE_BENEATH), by design.
e2e_place() { ln -f "$1" "$2" 2>/dev/null || cp "$1" "$2"; }

# Shared file trees: http/ (kernel, initrd) and tftp/ (first-stage iPXE binaries).
e2e_server_files() {
  mkdir -p "$E2E_RUN/http" "$E2E_RUN/tftp"
  e2e_place "$E2E_CACHE/vmlinuz" "$E2E_RUN/http/vmlinuz"
  e2e_place "$E2E_CACHE/initrd.img" "$E2E_RUN/http/initrd.img"
  local f
  for f in undionly.kpxe ipxe.efi; do
    [ -f "/usr/lib/ipxe/$f" ] || e2e_die "missing /usr/lib/ipxe/$f (package ipxe)"
    e2e_place "/usr/lib/ipxe/$f" "$E2E_RUN/tftp/$f"
  done
}

# PXELINUX over HTTP: lpxelinux.0 + ldlinux.c32 and a per-machine config (01-<mac>, PXELINUX's
# first MAC-based lookup name). The anchor serves them statically; chainboot renders its own.
e2e_pxelinux_files() {
  local dir="$E2E_RUN/http/pxelinux" mac
  mkdir -p "$dir/pxelinux.cfg"
  [ -f /usr/lib/PXELINUX/lpxelinux.0 ] || e2e_die "missing /usr/lib/PXELINUX/lpxelinux.0 (package pxelinux)"
  [ -f /usr/lib/syslinux/modules/bios/ldlinux.c32 ] \
    || e2e_die "missing /usr/lib/syslinux/modules/bios/ldlinux.c32 (package syslinux-common)"
  e2e_place /usr/lib/PXELINUX/lpxelinux.0 "$dir/lpxelinux.0"
  e2e_place /usr/lib/syslinux/modules/bios/ldlinux.c32 "$dir/ldlinux.c32"
  for mac in "$@"; do
    cat >"$dir/pxelinux.cfg/01-${mac//:/-}" <<EOF
DEFAULT e2e
PROMPT 0
TIMEOUT 0
LABEL e2e
  KERNEL http://$E2E_SERVER_IP/vmlinuz
  INITRD http://$E2E_SERVER_IP/initrd.img
  APPEND $(e2e_cmdline)
EOF
  done
}

e2e_nginx() {
  local listen="$E2E_SERVER_IP:80"
  [ "$E2E_FAMILY" = v6 ] && listen="[$E2E_SERVER_IP6]:80"
  e2e_require nginx:nginx-light
  mkdir -p "$E2E_RUN/nginx"
  cat >"$E2E_RUN/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
user root;
pid $E2E_RUN/nginx/nginx.pid;
error_log $E2E_RUN/nginx/error.log info;
events { worker_connections 256; }
http {
  log_format timed '\$msec \$remote_addr "\$request" \$status \$body_bytes_sent \$request_time';
  access_log $E2E_RUN/nginx.access.log timed;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  client_body_temp_path $E2E_RUN/nginx/tmp;
  proxy_temp_path $E2E_RUN/nginx/tmp;
  fastcgi_temp_path $E2E_RUN/nginx/tmp;
  uwsgi_temp_path $E2E_RUN/nginx/tmp;
  scgi_temp_path $E2E_RUN/nginx/tmp;
  server {
    listen $listen;
    root $E2E_RUN/http;
  }
}
EOF
  e2e_spawn nginx nginx -p "$E2E_RUN/nginx" -e "$E2E_RUN/nginx/error.log" -c "$E2E_RUN/nginx/nginx.conf"
}

# The signed chain as an operator writes it by hand: Debian's shim as the UEFI first stage and
# the signed network GRUB beside it at the TFTP root, GRUB's config at its prefix (grub/grub.cfg
# on the TFTP server), the kernel and initrd at the root too (Debian's signed GRUB fetches over
# TFTP only). At the root because shim looks for grubx64.efi in the folder of the boot file
# named in the DHCP answer's `file` field, and dnsmasq leaves that field empty for a client that
# asks for option 67 (as OVMF does), putting the name into the option: shim then looks at the
# root, whatever folder the name had.
e2e_grub_files() {
  local shim=/usr/lib/shim/shimx64.efi.signed grub=/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed
  [ -f "$shim" ] || e2e_die "missing $shim (package shim-signed)"
  [ -f "$grub" ] || e2e_die "missing $grub (package grub-efi-amd64-signed)"
  mkdir -p "$E2E_RUN/tftp/grub"
  e2e_place "$shim" "$E2E_RUN/tftp/shimx64.efi"
  e2e_place "$grub" "$E2E_RUN/tftp/grubx64.efi"
  e2e_place "$E2E_CACHE/vmlinuz" "$E2E_RUN/tftp/vmlinuz"
  e2e_place "$E2E_CACHE/initrd.img" "$E2E_RUN/tftp/initrd.img"
  cat >"$E2E_RUN/tftp/grub/grub.cfg" <<EOF
linux /vmlinuz $(e2e_cmdline)
initrd /initrd.img
boot
EOF
}

# What every anchor dnsmasq config starts with: on br0 only, in the foreground's log, leases and
# TFTP root in the run dir, and the seed's iPXE test (user class "iPXE", option 77 or 15).
e2e_dnsmasq_head() {
  cat <<EOF
port=0
interface=br0
bind-interfaces
user=root
pid-file=
log-dhcp
dhcp-leasefile=$E2E_RUN/dnsmasq.leases
enable-tftp
tftp-root=$E2E_RUN/tftp
dhcp-userclass=set:ipxe,iPXE
EOF
}

# dnsmasq as the recipe's DHCP + TFTP server (or, with proxy, proxyDHCP + TFTP beside another
# DHCP server). The tag logic is the seed's "if exists user-class and option user-class = iPXE".
# With grub, UEFI x86-64 firmware gets the shim instead of iPXE.
e2e_dnsmasq_boot() {
  local flavor=$1 ipxe_url="http://$E2E_SERVER_IP/boot.ipxe" conf="$E2E_RUN/dnsmasq.conf"
  [ "$flavor" = pxelinux ] && ipxe_url="http://$E2E_SERVER_IP/pxelinux/lpxelinux.0"
  e2e_dnsmasq_head >"$conf"
  cat >>"$conf" <<EOF
dhcp-match=set:efi64,option:client-arch,7
dhcp-match=set:efi64,option:client-arch,9
EOF
  if [ "$flavor" = proxy ]; then
    # proxyDHCP: boot information only; the PXE menu entries carry the file (dnsmasq keeps a
    # basename with a dot as is).
    cat >>"$conf" <<EOF
dhcp-range=$E2E_SERVER_IP,proxy
pxe-service=tag:!ipxe,x86PC,"chainboot e2e",undionly.kpxe
pxe-service=tag:!ipxe,X86-64_EFI,"chainboot e2e",ipxe.efi
pxe-service=tag:ipxe,x86PC,"chainboot e2e",$ipxe_url
pxe-service=tag:ipxe,X86-64_EFI,"chainboot e2e",$ipxe_url
EOF
  else
    cat >>"$conf" <<EOF
dhcp-range=198.18.0.100,198.18.0.200,255.255.255.0,1h
dhcp-option=option:router,$E2E_SERVER_IP
EOF
    if [ "$flavor" = grub ]; then
      echo "dhcp-boot=tag:efi64,shimx64.efi,,$E2E_SERVER_IP" >>"$conf"
    else
      # UEFI HTTP Boot clients (arch 16) as dnsmasq users set them up: option 60 "HTTPClient"
      # echoed (the firmware ignores an offer without it) and the first stage as a URL in the
      # boot file, fetched from nginx.
      cat >>"$conf" <<EOF
dhcp-match=set:efihttp,option:client-arch,16
dhcp-option-force=tag:efihttp,60,HTTPClient
dhcp-boot=tag:!ipxe,tag:!efi64,tag:!efihttp,undionly.kpxe,,$E2E_SERVER_IP
dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,,$E2E_SERVER_IP
dhcp-boot=tag:!ipxe,tag:efihttp,http://$E2E_SERVER_IP/ipxe-bin/ipxe.efi
dhcp-boot=tag:ipxe,$ipxe_url
EOF
    fi
  fi
  # Measurement knobs. iPXE's no-pxedhcp setting (175.176 = 1): do not wait for ProxyDHCP offers.
  if [ "${E2E_ANCHOR_NOPXEDHCP:-0}" = 1 ]; then
    echo "dhcp-option=tag:ipxe,encap:175,176,1b" >>"$conf"
  fi
  # dnsmasq pings an address before offering it to a new client and waits PING_WAIT (3 s) for
  # an answer; no-ping skips that check.
  if [ "${E2E_ANCHOR_NOPING:-0}" = 1 ]; then
    echo "no-ping" >>"$conf"
  fi
  e2e_require dnsmasq:dnsmasq
  e2e_spawn dnsmasq dnsmasq --keep-in-foreground --log-facility=- --conf-file="$conf"
}

# dnsmasq doing the recipe over IPv6: DHCPv6 with option 59 (bootfile-url) by client kind, its
# router advertisements (M flag: stateful DHCPv6; the prefix on-link) and TFTP.
#   iPXE (user class 15 "iPXE")          -> http://[2001:db8:1::1]/boot.ipxe
#   UEFI HTTP Boot (vendor class 16, enterprise 343, "HTTPClient")
#                                        -> http://[2001:db8:1::1]/ipxe-bin/ipxe.efi, and option 16
#                                           "HTTPClient" after enterprise 343, which edk2 requires
#   anything else (UEFI PXE over IPv6)   -> tftp://[2001:db8:1::1]/ipxe.efi
# UEFI HTTP Boot cannot boot from it: dnsmasq's option 16 is a list of length-prefixed strings
# with no enterprise number, so the bytes below go out as the text "00:00:01:57:..." (seen in
# its log: "sent size: 49 option: 16 vendor-class"), and OVMF cancels ("Could not retrieve NBP
# file size from HTTP server. Remote boot cancelled."). `e2e/scenarios/http6.sh anchor` fails
# for that reason; bench/boot does not run it.
e2e_dnsmasq_boot6() {
  local conf="$E2E_RUN/dnsmasq.conf" s6="[$E2E_SERVER_IP6]"
  # 343 (4 bytes), length 10 (2 bytes), "HTTPClient".
  local http_vendor=00:00:01:57:00:0a:48:54:54:50:43:6c:69:65:6e:74
  e2e_dnsmasq_head >"$conf"
  cat >>"$conf" <<EOF
enable-ra
dhcp-range=2001:db8:1::100,2001:db8:1::1ff,64,1h
dhcp-vendorclass=set:http,enterprise:343,HTTPClient
dhcp-option=tag:ipxe,option6:bootfile-url,http://$s6/boot.ipxe
dhcp-option=tag:!ipxe,tag:http,option6:bootfile-url,http://$s6/ipxe-bin/ipxe.efi
dhcp-option=tag:!ipxe,tag:http,option6:16,$http_vendor
dhcp-option=tag:!ipxe,tag:!http,option6:bootfile-url,tftp://$s6/ipxe.efi
EOF
  e2e_require dnsmasq:dnsmasq
  e2e_spawn dnsmasq dnsmasq --keep-in-foreground --log-facility=- --conf-file="$conf"
}

# The plain DHCP server of the proxy flavor: addresses only, on its own host (198.18.0.2).
e2e_plain_dhcp() {
  e2e_peer dhcp 198.18.0.2
  cat >"$E2E_RUN/dhcp-plain.conf" <<EOF
port=0
interface=eth0
bind-interfaces
user=root
pid-file=
log-dhcp
dhcp-leasefile=$E2E_RUN/dhcp-plain.leases
dhcp-range=198.18.0.100,198.18.0.200,255.255.255.0,1h
dhcp-authoritative
EOF
  # dnsmasq pings an address for 3 s before offering it to a new client and serves no other
  # DHCP packet meanwhile, so machines booting at once wait for each other's checks (UEFI PXE
  # then misses its 4 s offer window: docs/proxy-dhcp.md). E2E_PLAIN_NOPING=1 turns the check
  # off, to time the boot servers without it (scenario proxy-noping).
  if [ "${E2E_PLAIN_NOPING:-0}" = 1 ]; then
    echo "no-ping" >>"$E2E_RUN/dhcp-plain.conf"
  fi
  e2e_spawn_in "$E2E_PEER_NS" dhcp-plain dnsmasq --keep-in-foreground --log-facility=- \
    --conf-file="$E2E_RUN/dhcp-plain.conf"
}

e2e_anchor_start() {
  local flavor=$1 host=$E2E_SERVER_IP; shift
  [ "$E2E_FAMILY" = v6 ] && host="[$E2E_SERVER_IP6]"
  [ "$E2E_FAMILY" = dual ] && e2e_die "the anchor serves one family at a time (E2E_FAMILY v4 or v6)"
  if [ "$flavor" = grub ]; then
    e2e_grub_files
    e2e_dnsmasq_boot grub
    e2e_wait_listening 69 udp
    return 0
  fi
  e2e_server_files
  cat >"$E2E_RUN/http/boot.ipxe" <<EOF
#!ipxe
kernel http://$host/vmlinuz initrd=initrd.img $(e2e_cmdline)
initrd http://$host/initrd.img
boot
EOF
  [ "$flavor" = pxelinux ] && e2e_pxelinux_files "$@"
  [ "$flavor" = proxy ] && e2e_plain_dhcp
  e2e_nginx
  # UEFI HTTP Boot fetches the first stage over HTTP (chainboot serves it from /ipxe-bin/).
  mkdir -p "$E2E_RUN/http/ipxe-bin"
  e2e_place "$E2E_RUN/tftp/ipxe.efi" "$E2E_RUN/http/ipxe-bin/ipxe.efi"
  if [ "$E2E_FAMILY" = v6 ]; then
    [ "$flavor" = boot ] || e2e_die "the IPv6 anchor has the boot flavor only, not $flavor"
    e2e_dnsmasq_boot6
  else
    e2e_dnsmasq_boot "$flavor"
  fi
  e2e_wait_listening 80 tcp
}

# chainboot alone, with its config file; E2E_CHAINBOOT_EXTRA is appended verbatim at the end,
# E2E_CHAINBOOT_HTTP_EXTRA inside [http], E2E_CHAINBOOT_BOOT inside [boot],
# E2E_CHAINBOOT_IPV6 inside [ipv6], E2E_CHAINBOOT_IPXE inside [ipxe]; E2E_IPXE_DIR
# replaces /usr/lib/ipxe.
# A second server on the segment (a fleet, IPv4 only): E2E_CB_NAME names its files
# (chainboot-NAME.toml, .log, state-NAME/), E2E_CB_NS is its namespace (a peer's, see e2e_peer),
# E2E_CB_IP its address there and E2E_CB_IFACE its interface.
e2e_chainboot_start() {
  local flavor=$1 bin=${CHAINBOOT:-$E2E_REPO/target/debug/chainboot}; shift
  local name=${E2E_CB_NAME:+-$E2E_CB_NAME} ip=${E2E_CB_IP:-$E2E_SERVER_IP}
  local iface=${E2E_CB_IFACE:-br0} ns=${E2E_CB_NS:-$E2E_NS}
  local state="$E2E_RUN/state$name"
  [ -x "$bin" ] || e2e_die "chainboot binary not found at $bin (cargo build -p chainboot, or set CHAINBOOT)"
  # A private link to this binary, so a rebuild during the run cannot swap it under the test.
  ln -f "$bin" "$E2E_RUN/chainboot" 2>/dev/null || cp "$bin" "$E2E_RUN/chainboot"
  bin="$E2E_RUN/chainboot"
  e2e_server_files
  mkdir -p "$state"
  local conf="$E2E_RUN/chainboot$name.toml" mode=server advertise="" tftp_listen http_listen
  [ "$flavor" = proxy ] && mode=proxy
  # The listeners by family: IPv6 clients reach TFTP and HTTP at 2001:db8:1::1 (the address
  # DHCPv6 puts into its URLs); dual stack serves TFTP on [::] (IPv4 clients as mapped
  # addresses) and HTTP on both addresses.
  case $E2E_FAMILY in
    v4)
      advertise="advertise = \"$ip\""
      tftp_listen="\"$ip:69\"" http_listen="\"$ip:80\""
      ;;
    v6)
      mode=off
      tftp_listen="\"[$E2E_SERVER_IP6]:69\"" http_listen="\"[$E2E_SERVER_IP6]:80\""
      ;;
    dual)
      advertise="advertise = \"$E2E_SERVER_IP\""
      tftp_listen='"[::]:69"' http_listen="[\"$E2E_SERVER_IP:80\", \"[$E2E_SERVER_IP6]:80\"]"
      ;;
  esac
  cat >"$conf" <<EOF
[server]
interfaces = ["$iface"]
$advertise
state_dir = "$state"

[dhcp]
mode = "$mode"
EOF
  if [ "$mode" = server ]; then
    cat >>"$conf" <<EOF

[[dhcp.subnet]]
cidr = "198.18.0.0/24"
pools = [["198.18.0.100", "198.18.0.200"]]
router = "$E2E_SERVER_IP"
lease_time = "1h"
EOF
  fi
  if [ "$E2E_FAMILY" != v4 ]; then
    cat >>"$conf" <<EOF

[dhcp6]
mode = "server"

[[dhcp6.subnet]]
prefix = "$E2E_PREFIX6"
pools = [["2001:db8:1::100", "2001:db8:1::1ff"]]
EOF
  fi
  cat >>"$conf" <<EOF

[tftp]
listen = $tftp_listen
root = "$E2E_RUN/tftp"

[http]
listen = $http_listen
root = "$E2E_RUN/http"
${E2E_CHAINBOOT_HTTP_EXTRA:-}

[ipxe]
dir = "${E2E_IPXE_DIR:-/usr/lib/ipxe}"
${E2E_CHAINBOOT_IPXE:-}

[ipv6]
router_advertisements = "${E2E_CHAINBOOT_RA:-auto}"
${E2E_CHAINBOOT_IPV6:-}
EOF
  if [ "$flavor" = pxelinux ]; then
    # Only the loader and ldlinux.c32 are files; pxelinux.cfg/<name> is chainboot's to render.
    mkdir -p "$E2E_RUN/http/pxelinux"
    e2e_place /usr/lib/PXELINUX/lpxelinux.0 "$E2E_RUN/http/pxelinux/lpxelinux.0"
    e2e_place /usr/lib/syslinux/modules/bios/ldlinux.c32 "$E2E_RUN/http/pxelinux/ldlinux.c32"
    cat >>"$conf" <<EOF

[[profile]]
name = "e2e"
pxelinux = "pxelinux/lpxelinux.0"
kernel = "vmlinuz"
initrd = ["initrd.img"]
cmdline = "$(e2e_cmdline)"
EOF
  else
    cat >>"$conf" <<EOF

[[profile]]
name = "e2e"
kernel = "${E2E_KERNEL:-vmlinuz}"
initrd = ["initrd.img"]
cmdline = "$(e2e_cmdline)"
EOF
  fi
  cat >>"$conf" <<EOF

[boot]
default = "e2e"
${E2E_CHAINBOOT_BOOT:-}

[api]
token_file = "$state/api.token"
${E2E_CHAINBOOT_EXTRA:-}
EOF
  [ "$flavor" = proxy ] && e2e_plain_dhcp
  e2e_spawn_in "$ns" "chainboot$name" "$bin" serve --config "$conf" --log-level "${E2E_CHAINBOOT_LOG:-info}"
  e2e_wait_listening 80 tcp "$ns"
}

e2e_server_start() {
  local side=$1; shift
  case $side in
    anchor) e2e_anchor_start "$@" ;;
    chainboot) e2e_chainboot_start "$@" ;;
    *) e2e_die "server side must be 'anchor' or 'chainboot', not '$side'" ;;
  esac
  [ "${E2E_RA:-0}" = 1 ] && e2e_radvd
  return 0
}

# e2e_wait_listening PORT [tcp|udp] [NS]: bounded wait (10 s) until something listens on PORT in
# NS (default: the scenario's namespace; the servers start async); a server that exits
# meanwhile fails the run at once, with its log.
e2e_wait_listening() {
  local port=$1 ns=${3:-$E2E_NS} n label pid flags=-Hltn
  [ "${2:-tcp}" = udp ] && flags=-Hlun
  for ((n = 0; n < 100; n++)); do
    ip netns exec "$ns" ss "$flags" "sport = :$port" 2>/dev/null | grep -q . && return 0
    for label in chainboot chainboot-${E2E_CB_NAME:-} nginx dnsmasq; do
      eval "pid=\${E2E_PID_${label//[^A-Za-z0-9_]/_}:-}"
      if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
        tail -n 20 "$E2E_RUN/$label.log" >&2
        e2e_die "$label exited before listening (log above: $E2E_RUN/$label.log)"
      fi
    done
    sleep 0.1
  done
  e2e_die "no server listening on $E2E_SERVER_IP:$port after 10 s (see $E2E_RUN/*.log)"
}
