#!/usr/bin/env bash
# Scenario: BIOS on an IPv6-only network. SeaBIOS + the iPXE NIC ROM of ipxe-qemu: iPXE
# configures IPv6 from chainboot's router advertisement (M flag: stateful DHCPv6, user class
# iPXE) and gets http://[2001:db8:1::1]/boot.ipxe -> kernel -> marker with the address iPXE
# leased. Its DHCPv4 goes unanswered (nothing serves IPv4 here). The anchor side (bench/boot) is
# dnsmasq's DHCPv6 and router advertisements with nginx.
# Usage: e2e/scenarios/bios6.sh anchor|chainboot
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
[ -n "$side" ] || e2e_die "usage: $0 anchor|chainboot"
E2E_FAMILY=v6
e2e_scenario bios6 "$side" bios boot 1
e2e_assert_http_fetched boot.ipxe
e2e_assert_timeline "$(e2e_mac 1)" ipxe-dhcp script kernel initrd
