#!/usr/bin/env bash
# Builds the guest side of the e2e harness into e2e/.cache (gitignored):
#   vmlinuz      the Debian kernel of this release (linux-image-amd64 -> linux-image-<abi>-amd64),
#                fetched with `apt-get download` and unpacked with `dpkg -x` (nothing installed)
#   initrd.img   busybox-static + the NIC driver modules + /init (e2e/guest-init.sh), gzip cpio
# Everything is cached; a stamp file holds the inputs (kernel package version, busybox version,
# hash of /init and of this script) and the outputs are rebuilt when any of them changes.
# Prints nothing but errors unless E2E_VERBOSE=1. Usage: e2e/assets.sh  (prints the cache dir)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${E2E_CACHE:-$here/.cache}
mkdir -p "$cache"
log() { if [ "${E2E_VERBOSE:-0}" = 1 ]; then echo "assets: $*" >&2; fi; }
die() { echo "assets: ERROR: $*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg dpkg-query gzip sha256sum; do
  command -v "$tool" >/dev/null || die "missing tool '$tool'"
done
busybox=/bin/busybox
# (no `| grep -q` here: under pipefail, grep's early exit would fail busybox with SIGPIPE)
[ -x "$busybox" ] && case " $("$busybox" --list | tr '\n' ' ') " in *" udhcpc "*) true ;; *) false ;; esac \
  || die "busybox-static not installed (/bin/busybox with udhcpc); run: bash .ci/install-deps"
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' \
  || die "package busybox-static not installed (the initramfs needs a static busybox)"

# The kernel: the image package the meta package linux-image-amd64 points to on this Debian.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 (apt-get update needed?)"
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/{print $2}')
[ -n "$kver" ] && [ "$kver" != "(none)" ] || die "no candidate version for $kpkg"
bbver=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || echo unknown)
inputs="kernel=$kpkg=$kver busybox=$bbver init=$(sha256sum "$here/guest-init.sh" | cut -c1-16) \
script=$(sha256sum "$0" | cut -c1-16)"
if [ -f "$cache/stamp" ] && [ "$(cat "$cache/stamp")" = "$inputs" ] \
   && [ -s "$cache/vmlinuz" ] && [ -s "$cache/initrd.img" ]; then
  log "cached: $inputs"
  echo "$cache"
  exit 0
fi
log "building: $inputs"
rm -f "$cache/stamp"

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

deb="$cache/${kpkg}_${kver}.deb"
if [ ! -s "$deb" ]; then
  rm -f "$cache"/linux-image-*.deb
  (cd "$work" && apt-get download -q "$kpkg=$kver" >/dev/null 2>"$work/apt.err") \
    || { cat "$work/apt.err" >&2; die "apt-get download $kpkg=$kver failed"; }
  mv "$work"/linux-image-*.deb "$deb"
fi
mkdir "$work/kpkg"
dpkg -x "$deb" "$work/kpkg"
abi=${kpkg#linux-image-}
vmlinuz="$work/kpkg/boot/vmlinuz-$abi"
moddir="$work/kpkg/lib/modules/$abi"
[ -s "$vmlinuz" ] || die "no /boot/vmlinuz-$abi in $kpkg"
config="$work/kpkg/boot/config-$abi"
# The Debian kernel has no IP autoconfiguration (CONFIG_IP_PNP unset) and builds the NIC drivers
# as modules: /init loads them and runs udhcpc. Refuse an unexpected kernel loudly.
grep -q '^CONFIG_SERIAL_8250_CONSOLE=y' "$config" || die "kernel lacks a built-in serial console"
grep -q '^CONFIG_BLK_DEV_INITRD=y' "$config" && grep -q '^CONFIG_RD_GZIP=y' "$config" \
  || die "kernel lacks gzip initramfs support"

# Modules for virtio-net (the VMs' NIC) and e1000 (alternative NIC), with their dependencies
# read from each module's .modinfo "depends=" (no modinfo/depmod needed), in load order.
declare -A modpath=() loaded=()
while IFS= read -r f; do
  n=$(basename "$f"); n=${n%.ko*}
  modpath[$n]=$f
done < <(find "$moddir/kernel" -name '*.ko*')
order=()
add_module() {
  local name=$1 dep deps
  [ -n "${loaded[$name]:-}" ] && return 0
  [ -n "${modpath[$name]:-}" ] || die "module $name not in $kpkg (built in?)"
  case ${modpath[$name]} in *.ko) ;; *) die "compressed module ${modpath[$name]} not handled";; esac
  deps=$(tr '\0' '\n' < "${modpath[$name]}" | sed -n 's/^depends=//p' | tr ',' ' ')
  for dep in $deps; do add_module "$dep"; done
  loaded[$name]=1
  order+=("$name")
}
for m in virtio_pci virtio_net e1000; do
  grep -q "^CONFIG_$(echo "$m" | tr a-z A-Z)=y" "$config" && continue
  add_module "$m"
done

root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
mknod -m 600 "$root/dev/console" c 5 1 # so the kernel gives /init a console before devtmpfs
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp "$here/guest-init.sh" "$root/init"
chmod 755 "$root/init"
: > "$root/lib/modules/load-order"
for m in "${order[@]}"; do
  cp "${modpath[$m]}" "$root/lib/modules/$m.ko"
  echo "$m" >> "$root/lib/modules/load-order"
done
log "modules: ${order[*]}"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) \
  | gzip -9 > "$work/initrd.img"
cp "$vmlinuz" "$work/vmlinuz"
mv -f "$work/vmlinuz" "$cache/vmlinuz"
mv -f "$work/initrd.img" "$cache/initrd.img"
echo "$inputs" > "$cache/stamp"
log "done: vmlinuz $(stat -c %s "$cache/vmlinuz") B, initrd.img $(stat -c %s "$cache/initrd.img") B"
echo "$cache"
