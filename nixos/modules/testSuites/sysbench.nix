# sysbench: nixpkgs 24.05's package, each test run once for a fixed time, one output file
# per test.
{ config, lib, pkgs, utils, ... }:
let
  inherit (lib) mkOption types mkIf;
  suite = import ./lib.nix { inherit lib; };
  top = config.nixboot.testSuites;
  cfg = top.sysbench;
in
{
  imports = [ ./common.nix ];

  options.nixboot.testSuites.sysbench = suite.options {
    name = "sysbench";
    description = "sysbench, the CPU, memory and threads benchmarks";
    package = pkgs.sysbench;
    packageText = "pkgs.sysbench";
    tree = false;
  } // {
    tests = mkOption {
      type = types.listOf (types.enum [ "cpu" "memory" "threads" "mutex" "fileio" ]);
      default = [ "cpu" "memory" "threads" "mutex" ];
      description = "sysbench tests to run (fileio prepares its files in the run's directory).";
    };
    threads = mkOption {
      type = types.ints.unsigned;
      default = 0;
      description = "--threads (0: one per CPU).";
    };
    time = mkOption {
      type = types.ints.positive;
      default = 30;
      description = "--time of each test, in seconds.";
    };
  };

  config = mkIf cfg.enable (lib.mkMerge [
    (suite.config {
      inherit pkgs utils top cfg;
      treeSuite = false;
      name = "sysbench";
      path = [ ];
      script = ''
        threads=${toString cfg.threads}
        [ "$threads" != 0 ] || threads=$(nproc)
        for t in ${lib.escapeShellArgs cfg.tests}; do
          opts=(--threads="$threads" --time=${toString cfg.time})
          [ "$t" != fileio ] || opts+=(--file-test-mode=rndrw)
          [ "$t" != fileio ] || ${cfg.package}/bin/sysbench fileio prepare > "$run/fileio-prepare.txt"
          ${cfg.package}/bin/sysbench "$t" "''${opts[@]}" run | tee "$run/$t.txt"
          [ "$t" != fileio ] || ${cfg.package}/bin/sysbench fileio cleanup > /dev/null
        done
      '';
    })
    { environment.systemPackages = [ cfg.package ]; }
  ]);
}
