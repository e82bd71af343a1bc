#!/usr/bin/env bash
# Scenario 2: UEFI, the recipe's full chain. OVMF with the NIC option ROM disabled, so OVMF's own
# PXE stack boots (arch 7, no iPXE): DHCP -> TFTP the first stage (the recipe's ipxe.efi,
# chainboot's snponly.efi) -> iPXE's second DHCP (recognised, no
# loop) -> HTTP script -> kernel -> marker. The TFTP stage must happen exactly once per boot.
# Usage: e2e/scenarios/uefi.sh anchor|chainboot
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
e2e_scenario uefi "$side" uefi boot 1
e2e_assert_tftp_once "$(e2e_efi_stage "$side")" 1
e2e_assert_timeline "$(e2e_mac 1)" first-stage script kernel initrd
e2e_assert_no_secure_boot_refusal
