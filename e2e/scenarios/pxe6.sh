#!/usr/bin/env bash
# Scenario: UEFI PXE over IPv6 on an IPv6-only network. OVMF with its IPv4 stack off (fw_cfg
# opt/org.tianocore/IPv4Support, IPv4PXESupport = no), so "PXE over IPv6" is its first boot
# option: DHCPv6 (arch 7, PXEClient) -> chainboot's address and tftp://[2001:db8:1::1]/snponly.efi
# -> iPXE, which configures IPv6 from chainboot's router advertisement (M flag: stateful
# DHCPv6, user class iPXE) -> http://[2001:db8:1::1]/boot.ipxe -> kernel -> marker with the
# address iPXE leased. The first stage is fetched once; the firmware's DHCPv6 Release after the
# download neither starts a new boot in the timeline nor looks like a Secure Boot refusal.
# The anchor side is dnsmasq's DHCPv6 + router advertisements + TFTP and nginx (servers.sh),
# for bench/boot; the timeline checks are chainboot's.
# Usage: e2e/scenarios/pxe6.sh anchor|chainboot
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
[ -n "$side" ] || e2e_die "usage: $0 anchor|chainboot"
E2E_FAMILY=v6
E2E_QEMU_EXTRA=(-fw_cfg name=opt/org.tianocore/IPv4Support,string=no
  -fw_cfg name=opt/org.tianocore/IPv4PXESupport,string=no)
e2e_scenario pxe6 "$side" uefi boot 1
grep -aq '>>Start PXE over IPv6' "$E2E_RUN/vm1.serial" || e2e_die "the firmware did not boot PXE over IPv6"
e2e_assert_tftp_once "$(e2e_efi_stage "$side")" 1
e2e_assert_http_fetched boot.ipxe
e2e_assert_timeline "$(e2e_mac 1)" firmware-dhcp first-stage ipxe-dhcp script kernel initrd
e2e_assert_no_secure_boot_refusal
