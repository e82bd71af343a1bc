#!/usr/bin/env bash
# Scenario 4: proxy mode. A plain DHCP server (dnsmasq, addresses only) on a second host
# (198.18.0.2) hands out the addresses; the boot server answers only as proxyDHCP. Two VMs boot at
# the same time: one BIOS (iPXE ROM), one UEFI (OVMF's PXE -> TFTP ipxe.efi/snponly.efi -> iPXE) -> markers.
# Every address must come from the plain server's pool, and the boot server must hand out none.
# E2E_PLAIN_NOPING=1 (scenario proxy-noping): the plain server offers without its 3 s ping check.
# Usage: e2e/scenarios/proxy.sh anchor|chainboot
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
[ -n "$side" ] || e2e_die "usage: $0 anchor|chainboot"
name=proxy
[ "${E2E_PLAIN_NOPING:-0}" = 1 ] && name=proxy-noping
e2e_init "$name-$side"
. "$E2E_DIR/servers.sh"
e2e_topology
mac_bios=$(e2e_mac 1) mac_uefi=$(e2e_mac 2)
E2E_MACS=("$mac_bios" "$mac_uefi")
e2e_server_start "$side" proxy "${E2E_MACS[@]}"
e2e_vm_start vm1 bios "$mac_bios"
e2e_vm_start vm2 uefi "$mac_uefi"
e2e_vm_wait "vm1:$mac_bios" "vm2:$mac_uefi"
e2e_assert_addresses_from_plain_dhcp
e2e_assert_tftp_once "$(e2e_efi_stage "$side")" 1
e2e_assert_timeline "$mac_uefi" first-stage script kernel initrd
e2e_assert_timeline "$mac_bios" script kernel initrd
