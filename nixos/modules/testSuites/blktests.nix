# blktests, the block layer suite. nixpkgs 24.05 has no package: give a derivation or a
# built checkout. TEST_DEVS are the guest's extra disks, in /etc/blktests/config.
{ config, lib, pkgs, utils, ... }:
let
  inherit (lib) mkOption types mkIf;
  suite = import ./lib.nix { inherit lib; };
  top = config.nixboot.testSuites;
  cfg = top.blktests;
  tree = suite.treeOf cfg "";
  configFile = "/etc/blktests/config";
in
{
  imports = [ ./common.nix ];

  options.nixboot.testSuites.blktests = suite.options {
    name = "blktests";
    description = "blktests, the block layer regression suite";
  } // {
    testDevs = mkOption {
      type = types.listOf types.str;
      default = config.nixboot.guest.diskPaths;
      defaultText = lib.literalExpression "config.nixboot.guest.diskPaths";
      description = "TEST_DEVS: the devices blktests may destroy (empty: only tests that make their own, null_blk, loop, ...).";
    };
    extraConfig = mkOption {
      type = types.lines;
      default = "";
      description = "More lines of the config file.";
    };
    tests = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "block" "loop/001" ];
      description = "Groups or tests for `./check` (empty: all).";
    };
  };

  config = mkIf cfg.enable (lib.mkMerge [
    (suite.config {
      inherit pkgs utils top tree cfg;
      name = "blktests";
      devices = cfg.testDevs;
      path = with pkgs; [ nvme-cli sg3_utils multipath-tools lvm2 mdadm targetcli fio sysstat e2fsprogs xfsprogs ];
      script = ''
        cd "$tree"
        ./check -c ${configFile} -o "$run/results" ${lib.escapeShellArgs cfg.tests}
      '';
    })
    {
      environment.etc."blktests/config".text = ''
        # nixboot.testSuites.blktests
        TEST_DEVS=(${lib.escapeShellArgs cfg.testDevs})
        ${cfg.extraConfig}
      '';
      nixboot.guest.kernelModules = [ "null_blk" ];
    }
  ]);
}
