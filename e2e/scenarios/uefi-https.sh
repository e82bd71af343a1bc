#!/usr/bin/env bash
# Scenario 7: UEFI HTTP Boot over HTTPS. chainboot with a TLS listener and its lab CA
# (`[http] tls = "lab"`) and `https_for_http_boot`; two OVMF VMs as in uefi-http. vm1 was given
# the lab CA (fw_cfg etc/edk2/https/cacerts): it fetches iPXE from https://<server>/ipxe-bin/
# and boots to the marker. vm2 was not: its firmware refuses the server's certificate, never
# fetches iPXE and reaches no marker, and chainboot counts the refused handshake.
# Usage: e2e/scenarios/uefi-https.sh anchor|chainboot
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
[ -n "$side" ] || e2e_die "usage: $0 anchor|chainboot"
[ "$side" = chainboot ] || { echo "uefi-https: chainboot only (the recipe has no HTTP Boot)"; exit 0; }
e2e_init "uefi-https-$side"
. "$E2E_DIR/servers.sh"
e2e_topology
with_ca=$(e2e_mac 1) without_ca=$(e2e_mac 2)
E2E_MACS=("$with_ca")
E2E_CHAINBOOT_HTTP_EXTRA="tls_listen = [\"$E2E_SERVER_IP:443\"]
tls = \"lab\"
https_for_http_boot = true" e2e_server_start "$side" boot "$with_ca" "$without_ca"
e2e_wait_listening 443 tcp
ca="$E2E_RUN/state/tls/ca.crt"
[ -s "$ca" ] || e2e_die "chainboot made no lab CA at $ca"
python3 "$E2E_DIR/efi-siglist.py" "$ca" "$E2E_RUN/cacerts.esl" || e2e_die "cannot read $ca"
# OVMF's TLS seeds its random numbers from EFI_RNG_PROTOCOL; under TCG there is no RDRAND, so
# without a virtio RNG the firmware cannot start a TLS session and gives up before connecting.
knobs=(-fw_cfg name=opt/org.tianocore/IPv4PXESupport,string=no
  -fw_cfg name=opt/org.tianocore/IPv6Support,string=no
  -object rng-random,filename=/dev/urandom,id=rng0 -device virtio-rng-pci,rng=rng0)
E2E_QEMU_EXTRA=("${knobs[@]}" -fw_cfg "name=etc/edk2/https/cacerts,file=$E2E_RUN/cacerts.esl")
e2e_vm_start vm1 uefi "$with_ca"
E2E_QEMU_EXTRA=("${knobs[@]}")
e2e_vm_start vm2 uefi "$without_ca"
e2e_vm_wait "vm1:$with_ca" || exit 1
e2e_assert_timeline "$with_ca" first-stage script kernel initrd
# vm2 started with vm1 and has had as long; its one HTTPS attempt is long over.
grep -aq CHAINBOOT-MARKER "$E2E_RUN/vm2.serial" && e2e_die "vm2 booted without the CA"
grep -aq "URI: https://$E2E_SERVER_IP/ipxe-bin/" "$E2E_RUN/vm2.serial" \
  || e2e_die "vm2 was not offered an https:// URL"
# The firmware without the CA gives up before it connects: chainboot's account of that machine
# ends at the DHCP answer that offered https://, with nothing fetched.
timeline=$(e2e_api "/api/v1/machines/$without_ca/timeline")
python3 -c '
import json, sys
boots = json.loads(sys.argv[1]).get("boots") or []
sys.exit(0 if boots and boots[-1].get("reached") == "firmware-dhcp" else 1)' "$timeline" \
  || e2e_die "vm2's timeline does not end at its DHCP answer: $timeline"
vm1_ip=$(grep -aoE 'ip=198\.18\.0\.[0-9]+' "$E2E_RUN/vm1.serial" | head -1 | cut -d= -f2)
others=$(tcpdump -r "$E2E_RUN/bridge.pcap" -n "tcp dst port 443 and not src host $vm1_ip" 2>/dev/null | head -3)
[ -z "$others" ] || e2e_die "vm2 connected although it cannot trust the server: $others"
e2e_log "vm2 (no CA) was offered https://, refused before connecting; its timeline ends at DHCP"
