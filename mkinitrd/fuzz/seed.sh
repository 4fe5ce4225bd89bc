#!/usr/bin/env bash
# Seeds the `inspect` corpus with real archives: mkinitrd's own in every compression (with
# and without a microcode segment), and GNU cpio's when installed. Small on purpose.
# Usage: bash mkinitrd/fuzz/seed.sh   (from the repository root, after `cargo build -p mkinitrd`)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
mk="$root/target/debug/mkinitrd"
[ -x "$mk" ] || cargo build -q -p mkinitrd --manifest-path "$root/Cargo.toml"
out="$here/corpus/inspect"
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/sys" "$tmp/tree/d"
printf '#!/bin/sh\n' > "$tmp/sys/init"; chmod +x "$tmp/sys/init"
printf 'x' > "$tmp/tree/d/f"; ln -s d/f "$tmp/tree/l"
# A tiny static init so that seeds stay small: /bin/true is dynamic, so build one by hand.
printf '\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00\x01\x00\x00\x00\x78\x00\x40\x00\x00\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x40\x00\x38\x00\x01\x00\x40\x00\x00\x00\x00\x00\x01\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\x00\x40\x00\x00\x00\x00\x00\x81\x00\x00\x00\x00\x00\x00\x00\x81\x00\x00\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\xb8\x3c\x00\x00\x00\x31\xff\x0f\x05' > "$tmp/init"
chmod +x "$tmp/init"
printf 'ucode' > "$tmp/GenuineIntel.bin"
for c in zstd gzip xz lz4 none; do
  "$mk" --closure "$tmp/sys" --init "$tmp/init" --include "$tmp/tree:/t" -o "$out/mkinitrd-$c" --compress "$c" 2>/dev/null
  "$mk" --closure "$tmp/sys" --init "$tmp/init" --microcode "$tmp/GenuineIntel.bin" -o "$out/ucode-$c" --compress "$c" 2>/dev/null
done
if command -v cpio >/dev/null; then
  (cd "$tmp/tree" && find . | LC_ALL=C sort | cpio -o -H newc --quiet > "$out/gnu-cpio")
  gzip -9 -c "$out/gnu-cpio" > "$out/gnu-cpio-gz"
fi
ls -la "$out"
