#!/usr/bin/env bash
# Scenario: UEFI HTTP Boot over IPv6 on an IPv6-only network. OVMF with its IPv4 stack and its
# PXE over IPv6 off (fw_cfg opt/org.tianocore/IPv4Support, IPv6PXESupport = no): "HTTP Boot
# over IPv6" is its only network boot option. DHCPv6 as HTTPClient (arch 16) -> chainboot's
# address and http://[2001:db8:1::1]/ipxe-bin/ipxe.efi (option 16 echoes HTTPClient) -> iPXE
# over HTTP -> iPXE's DHCPv6 -> script -> kernel -> marker. No TFTP at all.
# chainboot only (dnsmasq cannot build the HTTPClient vendor class edk2 requires).
# Usage: e2e/scenarios/http6.sh anchor|chainboot
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
[ -n "$side" ] || e2e_die "usage: $0 anchor|chainboot"
[ "$side" = chainboot ] || { echo "http6: chainboot only"; exit 0; }
E2E_FAMILY=v6
E2E_QEMU_EXTRA=(-fw_cfg name=opt/org.tianocore/IPv4Support,string=no
  -fw_cfg name=opt/org.tianocore/IPv6PXESupport,string=no)
e2e_scenario http6 "$side" uefi boot 1
grep -aq '>>Start HTTP Boot over IPv6' "$E2E_RUN/vm1.serial" || e2e_die "the firmware did not run HTTP Boot over IPv6"
e2e_assert_tftp_once ipxe.efi 0
e2e_assert_http_fetched ipxe-bin/ipxe.efi
e2e_assert_timeline "$(e2e_mac 1)" firmware-dhcp first-stage ipxe-dhcp script kernel initrd
e2e_assert_no_secure_boot_refusal
