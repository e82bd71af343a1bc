#!/usr/bin/env bash
# Scenario: UEFI with Secure Boot on (OVMF secboot build, Microsoft's keys enrolled, q35 + SMM).
# chainboot hands the signed chain: DHCP -> TFTP secureboot/shimx64.efi (Debian's shim, signed by
# Microsoft) -> secureboot/grubx64.efi (Debian's signed GRUB, fetched by shim from beside itself)
# -> grub/grub.cfg (the stub) -> grub/mac/<mac>.cfg (rendered from the policy) -> the
# Debian-signed kernel and the initramfs over TFTP -> marker. The kernel's EFI stub ("UEFI Secure
# Boot is enabled") and its lockdown line prove Secure Boot was really on.
# The anchor does the same chain by hand (servers.sh, flavor grub): dnsmasq's DHCP and TFTP
# serving the same shim, GRUB, kernel and initrd and a hand-written grub/grub.cfg; the benchmark
# (bench/boot/run.sh, case secureboot) compares the two.
# Usage: e2e/scenarios/secureboot.sh anchor|chainboot
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
[ -n "$side" ] || { echo "usage: $0 anchor|chainboot" >&2; exit 1; }
for f in /usr/lib/shim/shimx64.efi.signed /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed; do
  [ -f "$f" ] || { echo "secureboot: missing $f (packages shim-signed, grub-efi-amd64-signed)" >&2; exit 1; }
done
# Measured here (TCG, busy host): marker after 44-48 s, within the harness's 240 s.
E2E_CHAINBOOT_BOOT='loader = { efi-x64 = "grub" }'
flavor=boot
[ "$side" = anchor ] && flavor=grub
e2e_scenario secureboot "$side" uefi-sb "$flavor" 1
serial="$E2E_RUN/vm1.serial"
for line in 'EFI stub: UEFI Secure Boot is enabled' 'Kernel is locked down from EFI Secure Boot'; do
  grep -aqF "$line" "$serial" || e2e_die "the kernel did not say: $line (Secure Boot off?)"
  e2e_log "the kernel says: $line"
done
if [ "$side" = anchor ]; then
  # The same files went out, as dnsmasq saw it.
  for f in shimx64.efi grubx64.efi grub/grub.cfg vmlinuz initrd.img; do
    grep -aq "sent $E2E_RUN/tftp/$f to" "$E2E_RUN/dnsmasq.log" \
      || e2e_die "dnsmasq's log shows no completed TFTP transfer of $f"
    e2e_log "dnsmasq's log: $f sent"
  done
  exit 0
fi
# Each file of the chain once, as the server saw it (GRUB probes and aborts transfers of its own,
# so the capture's error count is not the first stage's here).
for f in secureboot/shimx64.efi secureboot/grubx64.efi grub/mac/$(e2e_mac 1).cfg; do
  n=$(grep -a 'tftp transfer finished' "$E2E_RUN/chainboot.log" | grep -aF "path=$f " \
    | grep -ac 'outcome=completed' || true)
  [ "$n" -ge 1 ] || e2e_die "chainboot's log shows no completed TFTP transfer of $f"
  e2e_log "chainboot's log: $n completed TFTP transfer(s) of $f"
done
