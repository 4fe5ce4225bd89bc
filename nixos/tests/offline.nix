# What the offline nixpkgs 24.05 tree needs to evaluate NixOS configurations, injected by
# nixos/tests/eval only (never by the modules):
#  - writeShellApplication's check phase asks whether shellcheck (Haskell) can run; the
#    tree has no Hackage package set, so shellcheck-minimal is replaced by a stub whose
#    compiler supports no platform (the check is then skipped);
#  - nixpkgs.lib.nixosSystem records the nixpkgs source for the registry and NIX_PATH,
#    which would copy the whole tree into the store: turned off.
{
  overlay = final: prev: {
    shellcheck-minimal = { compiler.meta.platforms = [ ]; };
  };

  module = { lib, ... }: {
    nixpkgs.overlays = [ (import ./offline.nix).overlay ];
    nixpkgs.flake.source = lib.mkForce null;
  };
}
