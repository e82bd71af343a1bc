#!/usr/bin/env bash
# Runs the e2e scenarios (QEMU VMs netbooting in a private network namespace) and prints, per
# scenario, PASS/FAIL and its wall seconds, then "e2e: N passed (K only after a retry), M failed".
# Usage: e2e/run.sh [anchor|chainboot] [SCENARIO...]   (default: chainboot; scenarios: bios uefi
#        pxelinux proxy fail uefi-http uefi-https secureboot secureboot-detect secureboot-own
#        pxe6 http6 bios6 dual fleet). A failing scenario's own output (serial tail, server log, pcap path) is
#        printed after its line. Exit status non-zero if any scenario failed.
# A failed scenario runs once more (E2E_RETRIES, default 1): a VM boot under TCG has rare
# failures of its own (seen: PXELINUX's lwIP HTTP giving up mid-kernel about once in a dozen
# runs); the failed attempt's output is printed and the summary counts scenarios that passed
# only on a retry, so a flake stays visible and a real failure still fails.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
side=${1:-chainboot}
case $side in anchor | chainboot) shift || true ;; *) side=chainboot ;; esac
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(bios uefi pxelinux proxy fail uefi-http uefi-https secureboot secureboot-detect secureboot-own
  pxe6 http6 bios6 dual fleet)
passed=0 failed=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# Build the guest assets once up front so the first scenario's time is its own.
"$here/assets.sh" >/dev/null || { echo "e2e: building guest assets failed"; echo "e2e: 0 passed, ${#scenarios[@]} failed"; exit 1; }
retried=0
for s in "${scenarios[@]}"; do
  script="$here/scenarios/$s.sh"
  for ((attempt = 1; attempt <= 1 + ${E2E_RETRIES:-1}; attempt++)); do
    start=$(date +%s.%N)
    if [ -x "$script" ] && "$script" "$side" >"$out" 2>&1; then
      verdict=PASS
    else
      verdict=FAIL
      [ -x "$script" ] || echo "no such scenario: $script" >"$out"
    fi
    secs=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN{printf "%.1f", a-b}')
    label=$verdict
    [ "$attempt" -gt 1 ] && label="$verdict (attempt $attempt)"
    printf '%-4s %-10s %-9s %6ss\n' "$label" "$s" "$side" "$secs"
    if [ "$verdict" = FAIL ] || [ "${E2E_VERBOSE:-0}" = 1 ]; then sed 's/^/    /' "$out"; fi
    [ "$verdict" = PASS ] && break
    [ -x "$script" ] || break
  done
  if [ "$verdict" = PASS ]; then
    passed=$((passed + 1))
    [ "$attempt" -gt 1 ] && retried=$((retried + 1))
  else
    failed=$((failed + 1))
  fi
done
echo "e2e: $passed passed ($retried only after a retry), $failed failed"
[ "$failed" = 0 ]
