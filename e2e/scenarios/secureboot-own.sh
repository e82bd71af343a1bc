#!/usr/bin/env bash
# Scenario: a site's own Secure Boot keys. OVMF secboot with OVMF's snakeoil keys enrolled (they
# stand for a site's own), q35 + SMM. The site signs Debian's iPXE and the kernel with its key
# (sbsign) and points [ipxe] dir at the signed iPXE: the plain iPXE flow, every binary verified by
# the firmware against the site's key: PXE -> TFTP snponly.efi (site-signed) -> iPXE DHCP -> HTTP
# script -> the site-signed kernel -> marker, with Secure Boot on.
# Usage: e2e/scenarios/secureboot-own.sh anchor|chainboot (the anchor passes: not its feature)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
[ -n "$side" ] || e2e_die "usage: $0 anchor|chainboot"
[ "$side" = chainboot ] || { echo "secureboot-own: chainboot only"; exit 0; }
e2e_require sbsign:sbsigntool sbattach:sbsigntool openssl:openssl
e2e_init "secureboot-own-$side"
. "$E2E_DIR/servers.sh"
e2e_topology
mac=$(e2e_mac 1)
E2E_MACS=("$mac")
# The site's key (OVMF's test key, password "snakeoil") and what it signs.
keys="$E2E_RUN/keys"
mkdir -p "$keys" "$E2E_RUN/ipxe-signed"
openssl pkey -in /usr/share/ovmf/PkKek-1-snakeoil.key -passin pass:snakeoil -out "$keys/site.key"
cp /usr/share/ovmf/PkKek-1-snakeoil.pem "$keys/site.pem"
sign() { sbsign --key "$keys/site.key" --cert "$keys/site.pem" --output "$2" "$1" 2>/dev/null; }
sign /usr/lib/ipxe/snponly.efi "$E2E_RUN/ipxe-signed/snponly.efi"
cp /usr/lib/ipxe/undionly.kpxe "$E2E_RUN/ipxe-signed/undionly.kpxe"
# The kernel carries Debian's signature: replace it with the site's.
cp "$E2E_CACHE/vmlinuz" "$E2E_RUN/vmlinuz.unsigned"
sbattach --remove "$E2E_RUN/vmlinuz.unsigned" >/dev/null
mkdir -p "$E2E_RUN/http"
sign "$E2E_RUN/vmlinuz.unsigned" "$E2E_RUN/http/vmlinuz.site"
sbverify --cert "$keys/site.pem" "$E2E_RUN/http/vmlinuz.site" >/dev/null || e2e_die "kernel not signed"
E2E_IPXE_DIR="$E2E_RUN/ipxe-signed" E2E_KERNEL=vmlinuz.site e2e_server_start "$side" boot "$mac"
e2e_vm_start vm1 uefi-sb-own "$mac"
e2e_vm_wait "vm1:$mac" || exit 1
for line in 'EFI stub: UEFI Secure Boot is enabled' 'Kernel is locked down from EFI Secure Boot'; do
  grep -aqF "$line" "$E2E_RUN/vm1.serial" || e2e_die "the kernel did not say: $line"
done
e2e_log "the site-signed iPXE and kernel booted with Secure Boot on (snakeoil keys)"
