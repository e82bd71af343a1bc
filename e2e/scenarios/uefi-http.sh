#!/usr/bin/env bash
# Scenario 6: UEFI HTTP Boot over IPv4. OVMF with its PXE boot options and IPv6 turned off
# (fw_cfg knobs), so its "UEFI HTTPv4" option runs: DHCP as HTTPClient (arch 16) -> chainboot
# answers with http://<server>/ipxe-bin/snponly.efi and echoes HTTPClient in option 60 -> the
# firmware fetches iPXE over HTTP -> iPXE's own DHCP (recognised) -> script -> kernel -> marker.
# No TFTP at all. The anchor: the recipe's dnsmasq with the lines its users add for HTTP Boot
# (arch 16 -> option 60 HTTPClient and a URL boot file: e2e/servers.sh), nginx serving ipxe.efi.
# Usage: e2e/scenarios/uefi-http.sh anchor|chainboot
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
[ -n "$side" ] || e2e_die "usage: $0 anchor|chainboot"
E2E_QEMU_EXTRA=(-fw_cfg name=opt/org.tianocore/IPv4PXESupport,string=no
  -fw_cfg name=opt/org.tianocore/IPv6Support,string=no)
e2e_scenario uefi-http "$side" uefi boot 1
e2e_assert_tftp_once "$(e2e_efi_stage "$side")" 0
e2e_assert_http_fetched "ipxe-bin/$(e2e_efi_stage "$side")"
e2e_assert_timeline "$(e2e_mac 1)" first-stage script kernel initrd
