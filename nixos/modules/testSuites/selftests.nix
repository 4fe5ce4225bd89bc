# The kernel's selftests (tools/testing/selftests), from a kselftest install of the kernel
# under test (`make -C tools/testing/selftests install INSTALL_PATH=...`): not a nixpkgs
# package, it belongs to the kernel build.
{ config, lib, pkgs, utils, ... }:
let
  inherit (lib) mkOption types mkIf;
  suite = import ./lib.nix { inherit lib; };
  top = config.nixboot.testSuites;
  cfg = top.selftests;
in
{
  imports = [ ./common.nix ];

  options.nixboot.testSuites.selftests = suite.options {
    name = "selftests";
    description = "the kernel selftests (kselftest)";
  } // {
    collections = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "net" "mm" ];
      description = "Collections to run (`run_kselftest.sh -c`; empty: all).";
    };
  };

  config = mkIf cfg.enable (suite.config {
    inherit pkgs utils top cfg;
    tree = suite.treeOf cfg "";
    name = "selftests";
    path = with pkgs; [ python3 perl iproute2 ethtool procps ];
    script = ''
      cd "$tree"
      ./run_kselftest.sh ${lib.concatMapStringsSep " " (c: "-c ${lib.escapeShellArg c}") cfg.collections}
    '';
  });
}
