# Entry point of nixos/tests/eval: the flake's outputs, evaluated against a nixpkgs tree on
# disk instead of the `nixpkgs` flake input (no network, no lock file), then one mode of
# eval.nix.
#
#   nix-instantiate --read-write-mode --eval --strict --json nixos/tests/run.nix \
#     --arg nixpkgs /path/to/nixpkgs --argstr mode imageless
#
# modes: imageless libvirt baremetal controller assertions nixosinit kdevops generations verified flake
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

  inherit (nixpkgsInput) lib;
  results = import ./eval.nix {
    inherit lib;
    examples = flake.nixosConfigurations;
    inherit nixosSystem flake;
    modules = flake.nixosModules;
  };
  r = results.${mode};
in
# One line per property, then requests for the runner: "xml <guest> <file>" (the
# controller's domain XML, written to the store with builtins.toFile, no build) for
# virt-xml-validate, and "nokernel <drv>" (a derivation whose build graph must hold no kernel).
r.facts
++ lib.mapAttrsToList (name: xml: "xml ${name} ${builtins.toFile "nixboot-guest-${name}.xml" xml}") (r.xml or { })
++ map (drv: "nokernel ${builtins.unsafeDiscardStringContext drv}") (r.noKernel or [ ])
