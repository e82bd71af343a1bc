#!/usr/bin/env bash
# Scenario: one machine, both families. A dual-stack segment (br0 198.18.0.1 and 2001:db8:1::1;
# chainboot serves DHCP and DHCPv6, TFTP on [::], HTTP on both addresses). The same VM (same
# MAC, same SMBIOS UUID) powers on twice: first over IPv4 only (its IPv6 frames dropped at its
# bridge port, OVMF's IPv6 stack off): PXE -> TFTP ipxe.efi -> iPXE's DHCP -> HTTP -> marker
# with a DHCPv4 address; then over IPv6 only (IPv4 and ARP dropped, OVMF's IPv4 stack off):
# PXE over IPv6 -> TFTP ipxe.efi over IPv6 -> iPXE's DHCPv6 -> HTTP over IPv6 -> marker with a
# DHCPv6 address. chainboot's API then lists ONE machine, whose timeline holds both boots,
# each complete, with DHCP events of both families. This scenario hands out `ipxe.efi` (iPXE's
# own NIC drivers) instead of the default snponly.efi, so a VM boots through that choice too.
# Usage: e2e/scenarios/dual.sh anchor|chainboot
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
[ -n "$side" ] || e2e_die "usage: $0 anchor|chainboot"
[ "$side" = chainboot ] || { echo "dual: chainboot only"; exit 0; }
E2E_FAMILY=dual
e2e_init "dual-$side"
. "$E2E_DIR/servers.sh"
e2e_topology
mac=$(e2e_mac 1)
uuid="e2e0e2e0-0000-4000-8000-${mac//:/}"
E2E_MACS=("$mac")
export E2E_CHAINBOOT_IPXE='efi_x64 = "ipxe.efi"'
e2e_server_start "$side" boot "$mac"

# First power-on: IPv4.
e2e_family_only v4 v4
E2E_QEMU_EXTRA=(-fw_cfg name=opt/org.tianocore/IPv6Support,string=no)
e2e_vm_start v4 uefi "$mac" "$uuid"
E2E_MARKER_IP='198\.18\.0\.[0-9]+' e2e_vm_wait "v4:$mac" || exit 1
kill -TERM "$E2E_VMPID_v4" 2>/dev/null || true
wait "$E2E_VMPID_v4" 2>/dev/null || true
e2e_assert_timeline "$mac" firmware-dhcp first-stage ipxe-dhcp script kernel initrd

# Second power-on, same machine: IPv6.
e2e_family_only v6 v6
E2E_QEMU_EXTRA=(-fw_cfg name=opt/org.tianocore/IPv4Support,string=no)
e2e_vm_start v6 uefi "$mac" "$uuid"
E2E_MARKER_IP='2001:db8:1::1[0-9a-f]{2}' e2e_vm_wait "v6:$mac" || exit 1
grep -aq '>>Start PXE over IPv6' "$E2E_RUN/v6.serial" || e2e_die "the second power-on did not boot PXE over IPv6"
e2e_assert_tftp_once "$(e2e_efi_stage "$side")" 2
e2e_assert_timeline "$mac" firmware-dhcp first-stage ipxe-dhcp script kernel initrd
e2e_assert_no_secure_boot_refusal

# One machine with both boots.
machines=$(e2e_api "/api/v1/machines") || e2e_die "chainboot's API did not list the machines"
timeline=$(e2e_api "/api/v1/machines/$mac/timeline") || e2e_die "no timeline for $mac"
events=$(e2e_api "/api/v1/events?mac=$mac&kind=dhcp&limit=1000") || e2e_die "no events for $mac"
python3 -c '
import json, sys
machines, timeline, events, mac = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
macs = [m.get("mac") for m in machines]
if macs != [mac]:
    sys.exit("machines listed: %s (expected only %s)" % (macs, mac))
boots = timeline.get("boots") or []
done = [b for b in boots if b.get("reached") == "initrd" and b.get("errors") == 0]
if len(done) != 2:
    sys.exit("expected two complete boots, timeline: %s" % json.dumps(boots))
families = sorted({e["detail"].get("family") for e in events if e.get("detail")})
if families != ["ipv4", "ipv6"]:
    sys.exit("DHCP events of families %s (expected ipv4 and ipv6)" % families)
print("one machine %s: %d boots, both complete; DHCP events of %s" % (mac, len(boots), " and ".join(families)))
' "$machines" "$timeline" "$events" "$mac" || e2e_die "one machine across families: $machines"
e2e_log "chainboot's API: one machine, a complete boot over each family"
