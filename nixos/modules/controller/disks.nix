# The per-VM overlay and the extra disks of a guest (nixboot.controller.guests.<name>.disks): where their qcow2
# files live and the qemu-img command that creates one. Shared by domain.nix (the XML), the
# controller profile (its unit creates missing disks) and the real-libvirtd boot test.
{ lib }:
{
  # The qcow2 file of guest `guest`'s disk `disk` under `imageDir`.
  file = { imageDir, guest, disk }: "${imageDir}/${guest}-${disk}.qcow2";

  # Creates an empty, sparse qcow2 of `size` (qemu-img's syntax: 10G, 512M). The sector
  # sizes are not a property of the file: the domain XML's <blockio> gives them to the guest.
  createArgs = { qemuImg, file, size }: [ qemuImg "create" "-q" "-f" "qcow2" file size ];

  # A libvirt-mode guest's per-VM overlay over its read-only image (`backing`, qcow2).
  overlayArgs = { qemuImg, file, backing }: [ qemuImg "create" "-q" "-f" "qcow2" "-F" "qcow2" "-b" backing file ];
}
