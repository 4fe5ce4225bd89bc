# The options every test suite shares (where results go) and what any enabled suite needs
# (the results share, the loop module). Imported by each suite's module.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.nixboot.testSuites;
  suites = [ "fstests" "blktests" "ltp" "selftests" "mmtests" "pynfs" "sysbench" "gitr" ];
  enabled = lib.filter (s: cfg.${s}.enable or false) suites;
in
{
  imports = [
    ../core.nix
    ../mounts/shares.nix
    ../guest
  ];

  options.nixboot.testSuites = {
    resultsDir = mkOption {
      type = types.str;
      default = "/var/lib/nixboot/results";
      description = ''
        Where the suites write their results, one directory per suite and run. On an
        imageless guest this is the tmpfs root unless {option}`nixboot.testSuites.resultsShare`
        mounts the host's directory here.
      '';
    };

    resultsShare = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "results";
      description = ''
        virtiofs tag of a host directory mounted read-write on
        {option}`nixboot.testSuites.resultsDir` (the controller's
        `nixboot.controller.guests.<name>.results`), so results land on the host.
      '';
    };
  };

  config = lib.mkIf (enabled != [ ]) {
    nixboot.mounts.shares.nixboot-results = lib.mkIf (cfg.resultsShare != null) {
      tag = cfg.resultsShare;
      mountPoint = cfg.resultsDir;
    };
    systemd.tmpfiles.rules = [ "d ${cfg.resultsDir} 0755 root root -" ];
    # Most suites set up loop devices.
    nixboot.guest.kernelModules = [ "loop" ];
  };
}
