# What evaluating NixOS against the offline nixpkgs 24.05 tree with Debian's Nix 2.8 needs,
# injected by nixos/tests/eval only (never by the modules):
#  - writeShellApplication's check phase asks whether shellcheck (Haskell) can run; the
#    tree has no Hackage package set, so shellcheck-minimal is replaced by a stub whose
#    compiler supports no platform (the check is then skipped);
#  - nixpkgs.lib.nixosSystem records the nixpkgs source for the registry and NIX_PATH,
#    which would copy the whole tree into the store: turned off;
#  - the NixOS manual is not evaluated: rendering every option's documentation doubles the
#    memory of an evaluation, and its source filter (a Nix function called while Nix copies
#    a path) is where Debian's Nix 2.8 with an unpatched Boehm GC crashes (SIGSEGV in
#    GC_push_all_eager from a coroutine stack) once the heap is large.
{
  overlay = final: prev: {
    shellcheck-minimal = { compiler.meta.platforms = [ ]; };
  };

  module = { lib, ... }: {
    nixpkgs.overlays = [ (import ./offline.nix).overlay ];
    nixpkgs.flake.source = lib.mkForce null;
    documentation.nixos.enable = lib.mkForce false;
  };
}
