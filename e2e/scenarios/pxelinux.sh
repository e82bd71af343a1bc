#!/usr/bin/env bash
# Scenario 3: PXELINUX, the seed's own flow. iPXE (the BIOS NIC ROM) loads lpxelinux.0 over HTTP;
# PXELINUX fetches ldlinux.c32, its per-machine config (pxelinux.cfg/01-<mac>) and kernel + initrd
# over HTTP -> marker. PXELINUX is BIOS-only.
# Usage: e2e/scenarios/pxelinux.sh anchor|chainboot
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
e2e_scenario pxelinux "${1:-}" bios pxelinux 1
e2e_assert_http_fetched "pxelinux.cfg/01-${E2E_MACS[0]//:/-}"
e2e_assert_timeline "${E2E_MACS[0]}" script kernel initrd
