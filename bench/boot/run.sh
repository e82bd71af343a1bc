#!/usr/bin/env bash
# Boot-time benchmark: QEMU VMs (TCG) netbooting through the e2e harness, from QEMU start to the
# initramfs marker, BIOS (SeaBIOS + iPXE ROM) and UEFI (OVMF PXE -> ipxe.efi), interleaved:
#   anchor             dnsmasq + nginx doing the recipe (the seed's flow)
#   anchor+ra          same + radvd: router advertisement, M/O clear, router lifetime 0, no prefix
#   anchor+ra+nopxe    same + iPXE option 175.176 (no-pxedhcp) from dnsmasq
#   anchor-tuned       same + dnsmasq no-ping (no 3 s ICMP address check before an offer)
#   chainboot          target/debug/chainboot (or $CHAINBOOT) with its defaults ([ipv6] auto)
#   chainboot-ra-off   chainboot with [ipv6] router_advertisements = "off"
# Usage: bench/boot/run.sh [ROUNDS] [VARIANT...]   (ROUNDS default 3; chainboot variants only if
# the binary exists). Prints medians per variant and firmware: seconds to the marker, to the
# kernel's first line ("linux"), and iPXE's Configuring step (configuring -> boot.ipxe).
# Raw lines go to bench/results/boot-<time>.txt. Timing is never asserted; this is a script.
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
mkdir -p "$repo/bench/results"
raw="$repo/bench/results/boot-$(date +%Y%m%d-%H%M%S).txt"
export E2E_RESULTS="$raw"
: >"$raw"
echo "# boot bench $(date -u +%FT%TZ) rounds=$rounds nproc=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$raw"
"$repo/e2e/assets.sh" >/dev/null || exit 1

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
  local before
  before=$(wc -l <"$raw")
  if ! env "${env[@]}" "$repo/e2e/scenarios/$fw.sh" "$side" >"$raw.last" 2>&1; then
    echo "  $variant $fw: FAILED (output below)" >&2
    sed 's/^/    /' "$raw.last" | tail -n 30 >&2
  fi
  # Tag the line(s) this run added with the variant.
  sed -i "$((before + 1)),\$s/^scenario=/variant=$variant scenario=/" "$raw"
  tail -n +$((before + 1)) "$raw" | sed 's/^/  /'
}

for ((r = 1; r <= rounds; r++)); do
  echo "round $r/$rounds (load $(cut -d' ' -f1 /proc/loadavg))"
  for fw in bios uefi; do
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
echo "raw: $raw"
