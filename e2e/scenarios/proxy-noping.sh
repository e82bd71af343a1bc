#!/usr/bin/env bash
# Scenario proxy with the plain DHCP server's ping check off (dnsmasq no-ping): the same two VMs
# at once, timed without the plain server's 3 s per new address, during which it answers no
# other client (docs/proxy-dhcp.md). For bench/boot; every check of proxy.sh applies.
# Usage: e2e/scenarios/proxy-noping.sh anchor|chainboot
E2E_PLAIN_NOPING=1 exec "$(dirname "$0")/proxy.sh" "$@"
