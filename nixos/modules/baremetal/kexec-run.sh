#!/usr/bin/env bash
# nixboot kexec: boot the RAM-only NixOS of this tarball from any running Linux, as root:
#
#   tar -xzf nixboot-kexec-x86_64-linux.tar.gz -C /root && /root/kexec/run
#
# Carried over into the new system (read by its nixboot-carry service): the ssh host keys,
# root's authorized keys, and the static IP addresses and default routes of the interfaces
# (matched by MAC address, since interface names differ between distributions).
# Options: --no-exec (load only, do not jump), --no-carry (carry nothing).
set -euo pipefail
shopt -s nullglob

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
do_exec=1
do_carry=1
for arg in "$@"; do
  case $arg in
    --no-exec) do_exec=0 ;;
    --no-carry) do_carry=0 ;;
    *) echo "usage: $0 [--no-exec] [--no-carry]" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" != 0 ]; then
  echo "nixboot kexec: run me as root" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/nixboot-kexec.XXXXXX")
trap 'rm -rf "$work"' EXIT
initrd=$here/initrd

if [ "$do_carry" = 1 ]; then
  # Files under /etc/nixboot/carry/ of the initramfs; the init moves them to
  # /run/nixboot/carry/ of the new system.
  carry=$work/root/etc/nixboot/carry
  mkdir -p "$carry/ssh"
  for key in /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub; do
    cp "$key" "$carry/ssh/"
  done
  for keys in /root/.ssh/authorized_keys /root/.ssh/authorized_keys2 /etc/ssh/authorized_keys.d/root; do
    if [ -f "$keys" ]; then cat "$keys" >> "$carry/authorized_keys"; fi
  done
  if command -v ip >/dev/null 2>&1 && ip -j addr show >/dev/null 2>&1; then
    ip -j addr show > "$carry/addrs.json"
    ip -j route show > "$carry/routes.json"
    ip -j -6 route show > "$carry/routes6.json"
  fi
  chmod -R go-rwx "$carry"
  # A second newc archive appended to ours: the kernel unpacks them in order.
  (cd "$work/root" && find . -mindepth 1 | LC_ALL=C sort | "$here/cpio" --quiet -o -H newc -R 0:0) > "$work/carry.cpio"
  # The kernel reads a plain archive only at a 4-byte aligned offset, and an lz4 legacy
  # stream (no end marker) needs at least 4 NULs after it: pad with 4 to 7 NULs, which the
  # kernel skips between archives.
  size=$(stat -c %s "$here/initrd")
  { cat "$here/initrd"; head -c $(( 4 + (4 - size % 4) % 4 )) /dev/zero; cat "$work/carry.cpio"; } > "$work/initrd"
  initrd=$work/initrd
fi

"$here/kexec" --load "$here/bzImage" --initrd="$initrd" --command-line="$(cat "$here/cmdline")"

if [ "$do_exec" = 1 ]; then
  echo "nixboot kexec: loaded; jumping into the new kernel in 1 s"
  # Detached, so that an ssh session running this script can return first.
  if command -v systemd-run >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemd-run --on-active=1 --timer-property=AccuracySec=100ms "$here/kexec" -e
  else
    (sleep 1; "$here/kexec" -e) >/dev/null 2>&1 &
  fi
else
  echo "nixboot kexec: loaded; run '$here/kexec -e' to boot it"
fi
