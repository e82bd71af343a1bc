#!/usr/bin/env bash
# Scenario: UEFI HTTP Boot over IPv6 on an IPv6-only network. OVMF with its IPv4 stack off
# (fw_cfg opt/org.tianocore/IPv4Support = no). HTTP Boot over IPv6 cannot be the firmware's
# first network boot option: OVMF 2022.11's HTTP Boot starts DHCPv6 without waiting for the
# link-local address to be usable and fails at once, sending nothing ("Unexpected network
# error"); PXE over IPv6 waits for it. So PXE over IPv6 runs first and is made to fail: its
# TFTP requests are dropped at the VM's bridge port. Then "HTTP Boot over IPv6": DHCPv6 as
# HTTPClient (arch 16) -> chainboot's address and http://[2001:db8:1::1]/ipxe-bin/snponly.efi
# (option 16 echoes HTTPClient) -> iPXE over HTTP -> iPXE's DHCPv6 -> script -> kernel ->
# marker. No TFTP transfer reaches chainboot.
# The anchor side (dnsmasq's DHCPv6 and nginx, e2e/servers.sh) fails here: dnsmasq cannot send
# option 16 with an enterprise number, and OVMF cancels HTTP Boot without it. The checks of
# chainboot's log and timeline are chainboot's.
# Usage: e2e/scenarios/http6.sh anchor|chainboot
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
[ -n "$side" ] || e2e_die "usage: $0 anchor|chainboot"
E2E_FAMILY=v6
E2E_QEMU_EXTRA=(-fw_cfg name=opt/org.tianocore/IPv4Support,string=no)
e2e_init "http6-$side"
. "$E2E_DIR/servers.sh"
e2e_topology
mac=$(e2e_mac 1)
E2E_MACS=("$mac")
e2e_server_start "$side" boot "$mac"
e2e_drop_from vm1 'ether type ip6 ip6 nexthdr udp udp dport 69'
e2e_vm_start vm1 uefi "$mac"
e2e_vm_wait "vm1:$mac" || exit 1
for line in '>>Start PXE over IPv6' '>>Start HTTP Boot over IPv6'; do
  grep -aqF "$line" "$E2E_RUN/vm1.serial" || e2e_die "the firmware did not say: $line"
done
if grep -aq 'tftp transfer finished' "$E2E_RUN/chainboot.log"; then
  e2e_die "a TFTP transfer reached chainboot: $(grep -a 'tftp transfer finished' "$E2E_RUN/chainboot.log" | head -1)"
fi
e2e_assert_http_fetched "ipxe-bin/$(e2e_efi_stage "$side")"
e2e_assert_timeline "$mac" firmware-dhcp first-stage ipxe-dhcp script kernel initrd
e2e_assert_no_secure_boot_refusal
