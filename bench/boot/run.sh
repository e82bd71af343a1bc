#!/usr/bin/env bash
# Boot-time benchmark: QEMU VMs (TCG) netbooting through the e2e harness, from QEMU start to the
# initramfs marker, interleaved, for each case of CASES (default "bios uefi"):
#   bios         SeaBIOS + iPXE ROM
#   uefi         OVMF PXE -> the UEFI first stage (the anchor ipxe.efi, chainboot snponly.efi)
#   secureboot   OVMF with Secure Boot on (Microsoft's keys): PXE -> shim -> signed GRUB -> the
#                Debian-signed kernel and the initrd, all over TFTP (e2e/scenarios/secureboot.sh);
#                its anchor is dnsmasq (DHCP + TFTP) with a hand-written grub.cfg, no nginx (the
#                signed GRUB has no HTTP client)
#   pxelinux     iPXE ROM -> lpxelinux.0 over HTTP -> its per-machine config, kernel, initrd (the
#                seed's own PXELINUX flow)
#   proxy        proxyDHCP beside a plain DHCP server: a BIOS and a UEFI VM at once (each VM's
#                marker time counts)
#   proxy-noping the same with the plain server's ping check off (dnsmasq no-ping): it blocks
#                the plain server 3 s per new address, the two VMs wait for each other's, and
#                that decides most of `proxy` on both sides (docs/proxy-dhcp.md)
#   uefi-http    OVMF HTTP Boot over IPv4 (the anchor: dnsmasq with its users' HTTP Boot lines,
#                the first stage from nginx; e2e/servers.sh)
#   bios6, pxe6, http6   the same firmware on an IPv6-only bridge (e2e/scenarios/*6.sh): BIOS
#                iPXE ROM, OVMF PXE over IPv6, OVMF HTTP Boot over IPv6 (after a PXE over IPv6
#                attempt made to fail; chainboot only: dnsmasq's DHCPv6 cannot answer HTTP Boot)
# and each variant:
#   anchor             dnsmasq + nginx doing the recipe (the seed's flow); on the IPv6 cases
#                      dnsmasq's DHCPv6 + its router advertisements (M flag, the prefix on-link)
#                      + its TFTP, nginx on [2001:db8:1::1] (e2e/servers.sh)
#   anchor+ra          same + radvd: router advertisement, M/O clear, router lifetime 0, no prefix
#   anchor+ra+nopxe    same + iPXE option 175.176 (no-pxedhcp) from dnsmasq
#   anchor-tuned       same + dnsmasq no-ping (no 3 s ICMP address check before an offer)
#   chainboot          target/debug/chainboot (or $CHAINBOOT) with its defaults ([ipv6] auto)
#   chainboot-ra-off   chainboot with [ipv6] router_advertisements = "off"
#   chainboot-router   chainboot with [ipv6] router_lifetime = "600s" (its advertisement names it
#                      a default router: edk2 stops polling for a route to the boot server)
# The anchor+... and chainboot-ra-off variants are IPv4 measurements (they change what answers
# router solicitations on an IPv4-only link) and are skipped on the IPv6 cases; chainboot-router
# runs on the IPv6 cases only.
# The IPv6 comparison (anchor vs chainboot over IPv6, and chainboot's own IPv4 times beside it):
#   CASES="bios bios6 uefi pxe6 uefi-http http6" bash bench/boot/run.sh 3 anchor chainboot chainboot-router
# Usage: [CASES="bios uefi secureboot"] bench/boot/run.sh [ROUNDS] [VARIANT...]   (ROUNDS default
# 3; chainboot variants only if the binary exists; CHAINBOOT= names it, default target/debug).
# Refuses a busy machine (1-minute load >= 1.5) unless FORCE=1 (bench/lib.sh).
# Prints medians per variant and case: seconds to the marker, to the kernel's first line
# ("linux"), and iPXE's Configuring step (configuring -> boot.ipxe). Raw lines go to
# bench/boot/results/boot-<time>.txt, each run's result line followed by its `split` line
# (bench/boot/split.py: DHCP, TFTP, HTTP and RA times from the bridge capture). With both
# `anchor` and `chainboot` run, the ratio of their median marker times per case goes to
# bench/summary/boot-<case>-quiet.tsv (CONTENDED=1: -contended.tsv) for bench/summary.py; for an IPv6 case also chainboot's
# ratio to its own IPv4 case (bios, uefi, uefi-http) when that ran. Timing is never asserted; this is a
# script.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
rounds=${1:-3}
shift || true
variants=("$@")
if [ ${#variants[@]} -eq 0 ]; then
  variants=(anchor anchor+ra anchor+ra+nopxe anchor-tuned)
  [ -x "${CHAINBOOT:-$repo/target/debug/chainboot}" ] && variants+=(chainboot chainboot-ra-off chainboot-router)
fi
read -ra cases <<<"${CASES:-bios uefi}"
# shellcheck source=../lib.sh
. "$repo/bench/lib.sh"
load=$(check_quiet) || exit 3
# CONTENDED=1: every VM boots with bench/lib.sh's CPU hog on the last CPU (the same for both
# sides); the summary lines go to bench/summary/boot-<case>-contended.tsv.
CONTENDED=${CONTENDED:-0}
cond=quiet
[ "$CONTENDED" = 1 ] && cond=contended
command="CONTENDED=$CONTENDED CASES=\"${cases[*]}\" bash bench/boot/run.sh $rounds ${variants[*]}"
[ -n "${CHAINBOOT:-}" ] && command="CHAINBOOT=$CHAINBOOT $command"
mkdir -p "$repo/bench/boot/results"
raw="$repo/bench/boot/results/boot-$(date +%Y%m%d-%H%M%S).txt"
export E2E_RESULTS="$raw"
: >"$raw"
echo "# boot bench $(date -u +%FT%TZ) rounds=$rounds cases=${cases[*]} nproc=$(nproc) load=$load contended=$CONTENDED" >>"$raw"
"$repo/e2e/assets.sh" >/dev/null || exit 1
# Each run keeps its run dir (capture, serial, server logs) in a folder of ours until its split
# is read, then removes it.
runs=$(mktemp -d)
trap 'hog_stop; rm -rf "$runs"' EXIT

# Whether VARIANT is measured on CASE (see the header).
applies() {
  local variant=$1 case=$2 v6=0
  case $case in *6) v6=1 ;; esac
  case $variant in
    # dnsmasq cannot answer UEFI HTTP Boot over IPv6 (e2e/servers.sh says why).
    anchor) [ "$case" != http6 ] ;;
    chainboot) return 0 ;;
    chainboot-router) [ $v6 = 1 ] ;;
    *) [ $v6 = 0 ] ;;
  esac
}

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
    chainboot-router) side=chainboot env+=('E2E_CHAINBOOT_IPV6=router_lifetime = "600s"') ;;
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
    for v in "${variants[@]}"; do
      applies "$v" "$fw" || continue
      [ "$CONTENDED" = 1 ] && hog_start
      run_one "$v" "$fw"
      hog_stop
    done
  done
done
rm -f "$raw.last"

echo
printf '%-18s %-10s %3s %9s %9s %12s\n' variant case n marker_s linux_s configuring_s
awk '
  /^variant=/ {
    delete f
    for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    if (f["ok"] != 1) next
    # The case: the scenario without its side (bios and bios6 share a firmware).
    sc = f["scenario"]; sub(/-(anchor|chainboot)$/, "", sc)
    k = f["variant"] " " sc
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
      printf "%-18s %-10s %3d %9.1f %9.1f %12.1f\n", p[1], p[2], n[k], median(m, k, n[k]), median(l, k, n[k]), median(c, k, n[k])
    }
  }' "$raw" | tee -a "$raw.summary"
cat "$raw.summary" >>"$raw" && rm -f "$raw.summary"

# chainboot / anchor, median marker time per case (lower is better), for bench/summary.py.
declare -A names=([bios]="VM boot BIOS (SeaBIOS + iPXE ROM): QEMU start to marker vs dnsmasq+nginx (lower is better)"
  [uefi]="VM boot UEFI (OVMF PXE -> iPXE): QEMU start to marker vs dnsmasq+nginx (lower is better)"
  [secureboot]="VM boot Secure Boot (shim -> GRUB -> signed kernel): QEMU start to marker vs dnsmasq + grub.cfg (lower is better)"
  [bios6]="VM boot BIOS over IPv6 (iPXE ROM, DHCPv6): QEMU start to marker vs dnsmasq+nginx over IPv6 (lower is better)"
  [pxe6]="VM boot UEFI PXE over IPv6 (OVMF -> iPXE): QEMU start to marker vs dnsmasq+nginx over IPv6 (lower is better)"
  [uefi-http]="VM boot UEFI HTTP Boot (OVMF -> iPXE over HTTP): QEMU start to marker vs dnsmasq+nginx (lower is better)"
  [pxelinux]="VM boot PXELINUX over HTTP (iPXE ROM -> lpxelinux.0): QEMU start to marker vs dnsmasq+nginx (lower is better)"
  [proxy]="VM boot proxyDHCP beside a plain DHCP server (a BIOS and a UEFI VM at once): QEMU start to marker vs dnsmasq+nginx (lower is better)"
  [proxy-noping]="VM boot proxyDHCP beside a plain DHCP server without its ping check (a BIOS and a UEFI VM at once): QEMU start to marker vs dnsmasq+nginx (lower is better)")
# An IPv6 case against chainboot's own IPv4 case of the same firmware.
declare -A own4=([bios6]=bios [pxe6]=uefi [http6]=uefi-http)
stamp=$(date -u '+%Y-%m-%d %H:%MZ')
# ratio VARIANT_A CASE_A VARIANT_B CASE_B: median marker time of A / that of B ("" without both).
ratio() {
  awk -v va="$1" -v ca="$2" -v vb="$3" -v cb="$4" '
    /^variant=/ {
      delete f
      for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      if (f["ok"] != 1) next
      if (f["variant"] == va && f["scenario"] ~ "^" ca "-(anchor|chainboot)$") a[++na] = f["seconds"]
      if (f["variant"] == vb && f["scenario"] ~ "^" cb "-(anchor|chainboot)$") b[++nb] = f["seconds"]
    }
    function median(v, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    END { if (na && nb) printf "%.2f", median(a, na) / median(b, nb) }' "$raw"
}
# A run forced on a busy machine (FORCE=1) writes no summary line: its numbers decide nothing.
cases_summed=("${cases[@]}")
if awk -v l="$load" 'BEGIN { exit !(l >= 1.5) }'; then
  cases_summed=()
  echo "load average $load at the start: no summary line"
fi
for c in ${cases_summed[@]+"${cases_summed[@]}"}; do
  lines=""
  r=$(ratio chainboot "$c" anchor "$c")
  [ -n "${names[$c]:-}" ] && [ -n "$r" ] && lines+="${names[$c]}"$'\t'"$r"$'\n'
  r=""
  [ -n "${own4[$c]:-}" ] && r=$(ratio chainboot "$c" chainboot "${own4[$c]}")
  [ -n "$r" ] && lines+="VM boot $c: QEMU start to marker vs chainboot's own ${own4[$c]} over IPv4 (lower is better; target 1.10 at most)"$'\t'"$r"$'\n'
  [ -n "$lines" ] || continue
  printf '%s' "$lines" | while IFS=$'\t' read -r name value; do
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$cond" "$value" "$stamp" "$command" \
      "bench/boot/results/$(basename "$raw")"
  done >"$repo/bench/summary/boot-$c-$cond.tsv"
  echo "$c: $(cut -f1,3 "$repo/bench/summary/boot-$c-$cond.tsv" | tr '\t\n' ' ;')(bench/summary/boot-$c-$cond.tsv)"
done
echo "raw: $raw"
