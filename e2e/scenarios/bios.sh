#!/usr/bin/env bash
# Scenario 1: BIOS. SeaBIOS + the iPXE NIC ROM of ipxe-qemu. The ROM already is iPXE with HTTP,
# so the server must send it straight to HTTP (no TFTP); kernel + initrd -> marker (token, MAC, IP).
# Usage: e2e/scenarios/bios.sh anchor|chainboot
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
e2e_scenario bios "${1:-}" bios boot 1
e2e_assert_timeline "${E2E_MACS[0]}" script kernel initrd
