#!/usr/bin/env bash
# Scenario 5: a boot made to fail. BIOS as in scenario 1, but the profile's kernel does not exist:
# iPXE gets a 404 for it, and chainboot's timeline for the machine must show the error at the
# kernel stage (and nowhere else). Only the chainboot side keeps timelines; the anchor passes.
# Usage: e2e/scenarios/fail.sh anchor|chainboot
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
[ -n "$side" ] || e2e_die "usage: $0 anchor|chainboot"
[ "$side" = chainboot ] || { echo "fail: chainboot only (timelines)"; exit 0; }
e2e_init "fail-$side"
. "$E2E_DIR/servers.sh"
e2e_topology
mac=$(e2e_mac 1)
E2E_MACS=("$mac")
E2E_KERNEL=vmlinuz-missing e2e_server_start "$side" boot "$mac"
e2e_vm_start vm1 bios "$mac"
e2e_wait_timeline_error "$mac" kernel
