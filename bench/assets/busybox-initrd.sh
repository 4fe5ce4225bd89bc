#!/bin/sh
# Packs the hand-written busybox initramfs (the benchmark's minimal peer), the way a person
# would: static busybox with the applets the script uses, the 7 modules, /init, then
# cpio | gzip -9.
#   busybox-initrd.sh BUSYBOX MODULES_DIR INIT_SCRIPT OUTPUT
# MODULES_DIR is one kernel's lib/modules/<version>.
set -eu
bb=$1 moddir=$2 init=$3 out=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/dev" "$work/proc" "$work/sys" "$work/run" "$work/newroot" \
  "$work/lib/modules"
cp "$bb" "$work/bin/busybox"
for applet in sh mount insmod usleep switch_root poweroff; do
  ln -s busybox "$work/bin/$applet"
done
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
  drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci fs/fuse/fuse fs/fuse/virtiofs; do
  cp "$moddir/kernel/$m.ko" "$work/lib/modules/"
done
cp "$init" "$work/init"
chmod 755 "$work/init"
mknod -m 600 "$work/dev/console" c 5 1
(cd "$work" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 > "$out.tmp"
mv "$out.tmp" "$out"
