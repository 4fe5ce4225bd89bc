# The Linux Test Project. nixpkgs 24.05 has no package: give a derivation whose output is
# an LTP install (what `make install` puts in /opt/ltp) or that install's directory.
{ config, lib, pkgs, utils, ... }:
let
  inherit (lib) mkOption types mkIf;
  suite = import ./lib.nix { inherit lib; };
  top = config.nixboot.testSuites;
  cfg = top.ltp;
in
{
  imports = [ ./common.nix ];

  options.nixboot.testSuites.ltp = suite.options {
    name = "ltp";
    description = "the Linux Test Project";
  } // {
    scenarios = mkOption {
      type = types.listOf types.str;
      default = [ "syscalls" ];
      description = "runtest files to run (`runltp -f`).";
    };
  };

  config = mkIf cfg.enable (suite.config {
    inherit pkgs utils top cfg;
    tree = suite.treeOf cfg "";
    name = "ltp";
    path = with pkgs; [ perl python3 procps psmisc which iproute2 ];
    script = ''
      export LTPROOT="$tree"
      mkdir -p "$run/tmp"
      "$tree/runltp" -p -q -f ${lib.concatStringsSep "," cfg.scenarios} \
        -l "$run/ltp.log" -o "$run/ltp.out" -C "$run/failed" -T "$run/tconf" -d "$run/tmp"
    '';
  });
}
