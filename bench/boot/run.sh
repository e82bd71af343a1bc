#!/usr/bin/env bash
# Boot-time benchmark: QEMU VMs (TCG) netbooting through the e2e harness, from QEMU start to the
# initramfs marker, interleaved, for each case of CASES (default "bios uefi"):
#   bios         SeaBIOS + iPXE ROM
#   uefi         OVMF PXE -> ipxe.efi
#   secureboot   OVMF with Secure Boot on (Microsoft's keys): PXE -> shim -> signed GRUB -> the
#                Debian-signed kernel and the initrd, all over TFTP (e2e/scenarios/secureboot.sh);
#                its anchor is dnsmasq (DHCP + TFTP) with a hand-written grub.cfg, no nginx (the
#                signed GRUB has no HTTP client)
# and each variant:
#   anchor             dnsmasq + nginx doing the recipe (the seed's flow)
#   anchor+ra          same + radvd: router advertisement, M/O clear, router lifetime 0, no prefix
#   anchor+ra+nopxe    same + iPXE option 175.176 (no-pxedhcp) from dnsmasq
#   anchor-tuned       same + dnsmasq no-ping (no 3 s ICMP address check before an offer)
#   chainboot          target/debug/chainboot (or $CHAINBOOT) with its defaults ([ipv6] auto)
#   chainboot-ra-off   chainboot with [ipv6] router_advertisements = "off"
# Usage: [CASES="bios uefi secureboot"] bench/boot/run.sh [ROUNDS] [VARIANT...]   (ROUNDS default
# 3; chainboot variants only if the binary exists; CHAINBOOT= names it, default target/debug).
# Refuses a busy machine (1-minute load >= 1.5) unless FORCE=1 (bench/lib.sh).
# Prints medians per variant and firmware: seconds to the marker, to the kernel's first line
# ("linux"), and iPXE's Configuring step (configuring -> boot.ipxe). Raw lines go to
# bench/boot/results/boot-<time>.txt, each run's result line followed by its `split` line
# (bench/boot/split.py: DHCP, TFTP, HTTP and RA times from the bridge capture). With both
# `anchor` and `chainboot` run, the ratio of their median marker times per case goes to
# bench/summary/boot-<case>-quiet.tsv for bench/summary.py. Timing is never asserted; this is a
# script.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
rounds=${1:-3}
shift || true
variants=("$@")
if [ ${#variants[@]} -eq 0 ]; then
  variants=(anchor anchor+ra anchor+ra+nopxe anchor-tuned)
  [ -x "${CHAINBOOT:-$repo/target/debug/chainboot}" ] && variants+=(chainboot chainboot-ra-off)
fi
read -ra cases <<<"${CASES:-bios uefi}"
# shellcheck source=../lib.sh
. "$repo/bench/lib.sh"
load=$(check_quiet) || exit 3
command="CASES=\"${cases[*]}\" bash bench/boot/run.sh $rounds ${variants[*]}"
[ -n "${CHAINBOOT:-}" ] && command="CHAINBOOT=$CHAINBOOT $command"
mkdir -p "$repo/bench/boot/results"
raw="$repo/bench/boot/results/boot-$(date +%Y%m%d-%H%M%S).txt"
export E2E_RESULTS="$raw"
: >"$raw"
echo "# boot bench $(date -u +%FT%TZ) rounds=$rounds cases=${cases[*]} nproc=$(nproc) load=$load" >>"$raw"
"$repo/e2e/assets.sh" >/dev/null || exit 1
# Each run keeps its run dir (capture, serial, server logs) in a folder of ours until its split
# is read, then removes it.
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT

run_one() {
  local variant=$1 fw=$2 side=anchor
  local -a env=()
  case $variant in
    anchor) ;;
    anchor+ra) env+=(E2E_RA=1) ;;
    anchor+ra+nopxe) env+=(E2E_RA=1 E2E_ANCHOR_NOPXEDHCP=1) ;;
    anchor-tuned) env+=(E2E_RA=1 E2E_ANCHOR_NOPXEDHCP=1 E2E_ANCHOR_NOPING=1) ;;
    chainboot) side=chainboot ;;
    chainboot-ra-off) side=chainboot env+=(E2E_CHAINBOOT_RA=off) ;;
    *) echo "unknown variant $variant" >&2; return 1 ;;
  esac
  local before dir
  before=$(wc -l <"$raw")
  if ! env ${env[@]+"${env[@]}"} E2E_KEEP=1 E2E_RUNS="$runs" "$repo/e2e/scenarios/$fw.sh" "$side" >"$raw.last" 2>&1; then
    echo "  $variant $fw: FAILED (output below)" >&2
    sed 's/^/    /' "$raw.last" | tail -n 30 >&2
  fi
  for dir in "$runs"/*/; do
    [ -f "$dir/bridge.pcap" ] && python3 "$here/split.py" "$dir" >>"$raw"
    rm -rf "$dir"
  done
  # Tag the line(s) this run added with the variant.
  sed -i -e "$((before + 1)),\$s/^scenario=/variant=$variant scenario=/" \
    -e "$((before + 1)),\$s/^split /split variant=$variant case=$fw /" "$raw"
  tail -n +$((before + 1)) "$raw" | sed 's/^/  /'
}

for ((r = 1; r <= rounds; r++)); do
  echo "round $r/$rounds (load $(cut -d' ' -f1 /proc/loadavg))"
  for fw in "${cases[@]}"; do
    for v in "${variants[@]}"; do run_one "$v" "$fw"; done
  done
done
rm -f "$raw.last"

echo
printf '%-18s %-5s %3s %9s %9s %12s\n' variant fw n marker_s linux_s configuring_s
awk '
  /^variant=/ {
    delete f
    for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    if (f["ok"] != 1) next
    k = f["variant"] " " f["fw"]
    n[k]++
    m[k, n[k]] = f["seconds"]; l[k, n[k]] = f["linux"]
    c[k, n[k]] = ("script" in f && "configuring" in f) ? f["script"] - f["configuring"] : -1
    if (!(k in seen)) { seen[k] = 1; order[++no] = k }
  }
  function median(a, k, cnt,   i, j, t, v) {
    for (i = 1; i <= cnt; i++) v[i] = a[k, i]
    for (i = 1; i <= cnt; i++) for (j = i + 1; j <= cnt; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return (cnt % 2) ? v[(cnt + 1) / 2] : (v[cnt / 2] + v[cnt / 2 + 1]) / 2
  }
  END {
    for (o = 1; o <= no; o++) {
      k = order[o]; split(k, p, " ")
      printf "%-18s %-5s %3d %9.1f %9.1f %12.1f\n", p[1], p[2], n[k], median(m, k, n[k]), median(l, k, n[k]), median(c, k, n[k])
    }
  }' "$raw" | tee -a "$raw.summary"
cat "$raw.summary" >>"$raw" && rm -f "$raw.summary"

# chainboot / anchor, median marker time per case (lower is better), for bench/summary.py.
declare -A names=([bios]="VM boot BIOS (SeaBIOS + iPXE ROM): QEMU start to marker vs dnsmasq+nginx (lower is better)"
  [uefi]="VM boot UEFI (OVMF PXE -> ipxe.efi): QEMU start to marker vs dnsmasq+nginx (lower is better)"
  [secureboot]="VM boot Secure Boot (shim -> GRUB -> signed kernel): QEMU start to marker vs dnsmasq + grub.cfg (lower is better)")
stamp=$(date -u '+%Y-%m-%d %H:%MZ')
for c in "${cases[@]}"; do
  [ -n "${names[$c]:-}" ] || continue
  ratio=$(awk -v c="$c" '
    /^variant=/ {
      delete f
      for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      if (f["ok"] != 1 || f["scenario"] !~ "^" c "-") next
      if (f["variant"] == "anchor") a[++na] = f["seconds"]
      if (f["variant"] == "chainboot") b[++nb] = f["seconds"]
    }
    function median(v, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    END { if (na && nb) printf "%.2f", median(b, nb) / median(a, na) }' "$raw")
  [ -n "$ratio" ] || continue
  printf '%s\tquiet\t%s\t%s\t%s\t%s\n' "${names[$c]}" "$ratio" "$stamp" "$command" \
    "bench/boot/results/$(basename "$raw")" >"$repo/bench/summary/boot-$c-quiet.tsv"
  echo "$c: chainboot / anchor = $ratio (bench/summary/boot-$c-quiet.tsv)"
done
echo "raw: $raw"
