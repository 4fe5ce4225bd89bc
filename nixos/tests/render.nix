# Renders the controller's libvirt documents from its own generators with plain values
# (paths as strings: nothing is built, no NixOS is evaluated), for the real-libvirtd boot
# test (qemu-tests/tests/libvirt.rs):
#
#   nix-instantiate --eval --strict --json nixos/tests/render.nix \
#     --arg nixpkgs /path/to/nixpkgs --argstr request "$(cat request.json)"
#
# request: { domains = [ <domain.nix's arguments but lib> ]; network = <network.nix's
#            arguments but lib> or null; shares = [ <virtiofsd.nix args' arguments> ];
#            disks = [ <disks.nix createArgs' arguments> ]; overlays = [ <overlayArgs'> ]; }
# result:  { domains = [ "<domain .../>" ]; network = "<network .../>" or null;
#            virtiofsd = [ [ argv ] ]; disks = [ [ argv ] ]; overlays = [ [ argv ] ]; }
{ nixpkgs, request }:
let
  lib = import (nixpkgs + "/lib");
  r = builtins.fromJSON request;
  vfs = import ../modules/controller/virtiofsd.nix { inherit lib; };
  disks = import ../modules/controller/disks.nix { inherit lib; };
in
{
  domains = map (d: import ../modules/controller/domain.nix (d // { inherit lib; })) r.domains;
  network = if r.network or null == null then null
    else import ../modules/controller/network.nix (r.network // { inherit lib; });
  virtiofsd = map vfs.args (r.shares or [ ]);
  disks = map disks.createArgs (r.disks or [ ]);
  overlays = map disks.overlayArgs (r.overlays or [ ]);
}
