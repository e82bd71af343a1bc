#!/usr/bin/env bash
# "Try it": boot a virtual machine through chainboot on this machine and watch its console.
# Everything happens in a private network namespace (198.18.0.0/24) that is removed afterwards;
# the VM netboots the e2e kernel + initramfs, prints its marker line and powers off (~15-60 s).
# Usage (root): e2e/try.sh [bios|uefi]     needs target/debug/chainboot (cargo build) or $CHAINBOOT
set -euo pipefail
. "$(dirname "$0")/lib.sh"
fw=${1:-bios}
case $fw in bios | uefi) ;; *) e2e_die "usage: $0 [bios|uefi]" ;; esac
e2e_init "try-$fw"
. "$E2E_DIR/servers.sh"
e2e_topology
mac=$(e2e_mac 1)
e2e_server_start chainboot boot "$mac"
e2e_log "chainboot serving on $E2E_SERVER_IP (config: $E2E_RUN/chainboot.toml); starting a $fw VM"
e2e_vm_start vm1 "$fw" "$mac"
# The console, live, until the VM powers off (QEMU is bounded by its own hard timeout).
tail -n +1 -f --pid="$E2E_VMPID_vm1" "$E2E_RUN/vm1.serial" || true
if grep -aq "CHAINBOOT-MARKER token=$E2E_TOKEN " "$E2E_RUN/vm1.serial"; then
  e2e_log "the VM netbooted through chainboot and reached Linux userspace (marker above)"
else
  E2E_FAILED=1
  e2e_die "no marker on the console; chainboot's log: $E2E_RUN/chainboot.log"
fi
