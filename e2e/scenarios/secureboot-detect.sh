#!/usr/bin/env bash
# Scenario: a Secure Boot machine nobody told chainboot about. OVMF secboot + Microsoft's keys, no
# `loader` in the config, `[boot] secure_boot_fallback = "grub"`. First power-on: chainboot hands
# the unsigned snponly.efi, the firmware refuses it ("Access Denied") and moves on to its next boot
# option (PXE over IPv6, which waits minutes for DHCPv6): iPXE never asks DHCP, and a minute after
# the download chainboot records the refusal (event secure-boot-refused, log line). The harness
# then powers the VM off and on again (same MAC): the second power-on gets shim -> GRUB -> the
# signed kernel, and reaches the marker with Secure Boot on.
# Usage: e2e/scenarios/secureboot-detect.sh anchor|chainboot (the anchor passes: no signed chain)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
[ -n "$side" ] || e2e_die "usage: $0 anchor|chainboot"
[ "$side" = chainboot ] || { echo "secureboot-detect: chainboot only"; exit 0; }
e2e_init "secureboot-detect-$side"
. "$E2E_DIR/servers.sh"
e2e_topology
mac=$(e2e_mac 1)
E2E_MACS=("$mac")
E2E_CHAINBOOT_BOOT='secure_boot_fallback = "grub"' e2e_server_start "$side" boot "$mac"

# First power-on: refused.
e2e_vm_start vm1 uefi-sb "$mac"
deadline=$(($(date +%s) + E2E_VM_TIMEOUT))
until grep -aq "first stage refused by the firmware" "$E2E_RUN/chainboot.log"; do
  [ "$(date +%s)" -lt "$deadline" ] || e2e_die "no refusal recorded within ${E2E_VM_TIMEOUT}s"
  sleep 0.5
done
e2e_log "first power-on: $(grep -ao 'Access Denied' "$E2E_RUN/vm1.serial" | head -1) on the console; chainboot: $(grep -a 'first stage refused by the firmware' "$E2E_RUN/chainboot.log" | head -1 | cut -c1-200)"
grep -aq 'Access Denied' "$E2E_RUN/vm1.serial" || e2e_die "the firmware did not say Access Denied"
kill -TERM "$E2E_VMPID_vm1" 2>/dev/null || true
wait "$E2E_VMPID_vm1" 2>/dev/null || true

# Second power-on, same machine: the signed chain.
e2e_vm_start vm2 uefi-sb "$mac"
e2e_vm_wait "vm2:$mac" || exit 1
for line in 'EFI stub: UEFI Secure Boot is enabled' 'Kernel is locked down from EFI Secure Boot'; do
  grep -aqF "$line" "$E2E_RUN/vm2.serial" || e2e_die "the kernel did not say: $line"
done
grep -aq 'NBP filename is secureboot/shimx64.efi' "$E2E_RUN/vm2.serial" \
  || e2e_die "the second power-on did not get the signed chain"
events=$(e2e_api "/api/v1/events?mac=$mac&kind=secure-boot-refused") || e2e_die "API"
grep -q 'secure-boot-refused' <<<"$events" || e2e_die "no secure-boot-refused event for $mac: $events"
e2e_log "events: the refusal is in the machine's history; second power-on booted shim -> GRUB -> kernel"
