#!/bin/sh
# The hand-written peer of nixboot's benchmark: the /init a person writes in a few minutes
# for a virtiofs root on Debian's 6.1 cloud kernel. Mounts the kernel filesystems, loads
# the 7 modules virtiofs needs (dependencies first), retries the mount of tag "store" every
# 10 ms (at most 30 s), moves the kernel filesystems into the new root and switches to it.
export PATH=/bin
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs; do
  insmod /lib/modules/$m.ko || echo "busybox-init: insmod $m failed"
done
n=0
until mount -t virtiofs store /newroot 2>/dev/null; do
  n=$((n + 1))
  if [ $n -ge 3000 ]; then
    echo "busybox-init: virtiofs tag store did not appear within 30 s"
    poweroff -f
  fi
  usleep 10000
done
for d in dev proc sys run; do
  mount -o move /$d /newroot/$d
done
exec switch_root /newroot /sbin/init
