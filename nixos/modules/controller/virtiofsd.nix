# The host side of a read-only virtiofs share when libvirt cannot make one read-only itself.
#
# libvirt before 11.0 refuses `<readonly/>` on virtiofs ("virtiofs does not yet support
# read-only mode"), and the virtiofsd it starts runs as root with write access: a guest that
# remounts the share read-write writes into the host directory. So for libvirt < 11 the
# controller starts one virtiofsd per read-only share itself, with `--readonly`, as an
# unprivileged user, and the domain XML attaches its socket (`<source socket=...>`). From
# libvirt 11.0 on, `<readonly/>` makes libvirt's own virtiofsd read-only.
#
# Pure functions, shared by the controller profile (its systemd units), domain.nix (the
# socket path) and the real-libvirtd boot test (which starts virtiofsd with exactly `args`).
{ lib }:
rec {
  # Whether libvirt `version` has read-only virtiofs (`<readonly/>` on a virtiofs filesystem).
  nativeReadOnly = version: lib.versionAtLeast version "11.0";

  # A guest's virtiofs filesystems, tag -> { source; readOnly; }: for imageless guests the
  # store (and an external kernel's modules), read-only; then the guest's own shares.
  filesystems = { imageless, storeTag, modulesTag, modulesDir, shares }:
    lib.optionalAttrs imageless ({ ${storeTag} = { source = "/nix/store"; readOnly = true; }; }
      // lib.optionalAttrs (modulesDir != null) { ${modulesTag} = { source = modulesDir; readOnly = true; }; })
    // lib.mapAttrs (_: s: { inherit (s) source readOnly; }) shares;

  # The vhost-user socket of guest `guest`'s share `tag` under `socketDir`.
  socket = { socketDir, guest, tag }: "${socketDir}/${guest}-${tag}.sock";

  # virtiofsd's command line for one read-only share. `--readonly` is the protection: the
  # daemon refuses every write whatever the guest mounts. `--sandbox=none`: the unprivileged
  # user it runs as cannot create namespaces; what it may reach is what that user may read.
  # `--socket-group` (optional): QEMU (libvirt's unprivileged QEMU user) must be able to
  # connect; only root may give the socket to a group it is not in, so the controller's
  # units leave it out and put the sockets in a setgid directory of QEMU's group instead.
  args = { virtiofsd, socket, source, socketGroup ? null }:
    [
      virtiofsd
      "--socket-path=${socket}"
      "--shared-dir=${source}"
      "--readonly"
      "--sandbox=none"
      "--cache=auto"
    ] ++ lib.optional (socketGroup != null) "--socket-group=${socketGroup}";
}
