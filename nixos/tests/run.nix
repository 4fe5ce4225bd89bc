# Entry point of nixos/tests/eval: the flake's outputs, evaluated against a nixpkgs tree on
# disk instead of the `nixpkgs` flake input (no network, no lock file), then one mode of
# eval.nix.
#
#   nix-instantiate --read-write-mode --eval --strict --json nixos/tests/run.nix \
#     --arg nixpkgs /path/to/nixpkgs --argstr mode imageless
{ nixpkgs, mode, repo ? ../.. }:
let
  offline = import ./offline.nix;
  np = toString nixpkgs;

  # The nixpkgs flake, called by hand. outPath stays a plain string so that nothing copies
  # the tree into the store.
  upstream = (import (nixpkgs + "/flake.nix")).outputs { self = upstream // { outPath = np; }; };
  nixosSystem = args: upstream.lib.nixosSystem (args // { modules = args.modules ++ [ offline.module ]; });
  nixpkgsInput = upstream // {
    outPath = np;
    lib = upstream.lib // { inherit nixosSystem; };
    legacyPackages = { x86_64-linux = import nixpkgs { system = "x86_64-linux"; overlays = [ offline.overlay ]; }; };
  };

  flake = (import (repo + "/flake.nix")).outputs {
    self = flake // { outPath = toString repo; };
    nixpkgs = nixpkgsInput;
  };

  results = import ./eval.nix {
    inherit (nixpkgsInput) lib;
    examples = flake.nixosConfigurations;
    inherit nixosSystem flake;
    modules = flake.nixosModules;
  };
in
results.${mode}
