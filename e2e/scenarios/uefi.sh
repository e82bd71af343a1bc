#!/usr/bin/env bash
# Scenario 2: UEFI, the recipe's full chain. OVMF with the NIC option ROM disabled, so OVMF's own
# PXE stack boots (arch 7, no iPXE): DHCP -> TFTP ipxe.efi -> iPXE's second DHCP (recognised, no
# loop) -> HTTP script -> kernel -> marker. The TFTP stage must happen exactly once per boot.
# Usage: e2e/scenarios/uefi.sh anchor|chainboot
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
e2e_scenario uefi "$side" uefi boot 1
e2e_assert_tftp_once ipxe.efi 1
e2e_assert_timeline "$(e2e_mac 1)" first-stage script kernel initrd
# A healthy UEFI boot never looks like a Secure Boot refusal (iPXE asked DHCP after its download).
if grep -aq 'first stage refused by the firmware' "$E2E_RUN/chainboot.log" 2>/dev/null; then
  e2e_die "a healthy UEFI boot was taken for a Secure Boot refusal"
fi
