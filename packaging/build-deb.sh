#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (cargo install cargo-deb --locked):
# target/debian/chainboot_<version>-1_<arch>.deb. The man pages and shell completions are
# generated from the built binary's own command-line definition first (`chainboot generate`).
# Usage: packaging/build-deb.sh [PROFILE]   PROFILE: release (default) or dev (CI's package
#        test: no second optimised build of the workspace; the binary is stripped either way).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-release}
case $profile in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "usage: $0 [release|dev]" >&2; exit 2 ;;
esac
command -v cargo-deb >/dev/null || { echo "cargo-deb missing: cargo install cargo-deb --locked" >&2; exit 1; }
cargo build -p chainboot --locked --profile "$profile"
bin=target/$dir/chainboot
assets=target/$dir/assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" generate man "$assets/man"
gzip -9n "$assets"/man/*.1
"$bin" generate completions bash >"$assets"/completions/chainboot.bash
"$bin" generate completions zsh >"$assets"/completions/_chainboot
"$bin" generate completions fish >"$assets"/completions/chainboot.fish
cargo deb -p chainboot --no-build --locked --profile "$profile" --strip --fast -o target/debian/
