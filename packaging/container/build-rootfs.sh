#!/usr/bin/env bash
# The container image's root filesystem, in target/container/rootfs: /usr/bin/chainboot, the
# shared libraries ldd names for it (glibc, libm, libgcc_s, the loader), the iPXE first-stage
# binaries of the host's ipxe package (as files, not symlinks), the package's starter config,
# /var/lib/chainboot and /tmp. Nothing else: no shell, no package manager.
# Usage: packaging/container/build-rootfs.sh [release|dev]  (default release; the binary is
# stripped either way).
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${1:-release}
case $profile in release) dir=release ;; dev) dir=debug ;; *) echo "usage: $0 [release|dev]" >&2; exit 2 ;; esac
cargo build -p chainboot --locked --profile "$profile"
bin=target/$dir/chainboot
out=target/container
rm -rf "$out/rootfs"
mkdir -p "$out/rootfs"
r=$out/rootfs
install -D -m 0755 "$bin" "$r/usr/bin/chainboot"
strip "$r/usr/bin/chainboot"
# Each library at the path the loader looks for it (its real file copied under that name).
ldd "$bin" | awk '/=>/ {print $3; next} $1 ~ /^\// {print $1}' | while read -r lib; do
  [ -f "$lib" ] || continue
  install -D -m 0644 "$(readlink -f "$lib")" "$r$lib"
done
chmod 0755 "$r"/lib64/ld-linux-* 2>/dev/null || true
found=0
for f in undionly.kpxe ipxe.pxe ipxe.efi snponly.efi; do
  if [ -e "/usr/lib/ipxe/$f" ]; then
    install -D -m 0644 "$(readlink -f "/usr/lib/ipxe/$f")" "$r/usr/lib/ipxe/$f"
    found=$((found + 1))
  fi
done
[ "$found" -gt 0 ] || { echo "no iPXE binaries in /usr/lib/ipxe: apt-get install ipxe" >&2; exit 1; }
install -D -m 0644 packaging/chainboot.toml "$r/etc/chainboot/chainboot.toml"
printf 'root:x:0:0:root:/:/usr/bin/chainboot\n' >"$r/etc/passwd"
printf 'root:x:0:\n' >"$r/etc/group"
mkdir -p "$r/var/lib/chainboot" "$r/tmp"
chmod 0700 "$r/var/lib/chainboot"
chmod 1777 "$r/tmp"
echo "$r"
