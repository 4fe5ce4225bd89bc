# Monitoring of a test run, bracketed by whoever drives it (kdevops, a suite's unit):
# `systemctl start nixboot-monitor-sysstat@<run>` before the workload and `stop` after.
# sar records every activity to <outputDir>/sa while it runs; on stop the recording is
# also written as JSON (sadf -j). outputDir defaults to the test suites' results
# directory, so a results share carries it to the host.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.nixboot.profiles.monitoring;
  out = cfg.outputDir;
in
{
  imports = [ ../core.nix ];

  options.nixboot.profiles.monitoring = {
    enable = lib.mkEnableOption "test-run monitoring: sysstat recorder unit nixboot-monitor-sysstat@<run>, htop, iotop, perf";

    outputDir = mkOption {
      type = types.str;
      default = "${config.nixboot.testSuites.resultsDir or "/var/lib/nixboot/results"}/monitoring/%i";
      defaultText = lib.literalExpression ''"''${config.nixboot.testSuites.resultsDir}/monitoring/%i"'';
      description = "Where a run's recording goes; systemd replaces %i with the run (the unit's instance).";
    };

    interval = mkOption {
      type = types.ints.positive;
      default = 5;
      description = "Seconds between samples.";
    };
  };

  config = lib.mkIf cfg.enable {
    environment.systemPackages = with pkgs; [ sysstat htop iotop lsof numactl config.boot.kernelPackages.perf ];

    systemd.services."nixboot-monitor-sysstat@" = {
      description = "nixboot: sysstat recording of run %i";
      serviceConfig = {
        Type = "simple";
        ExecStartPre = "${pkgs.coreutils}/bin/mkdir -p ${out}";
        ExecStart = "${pkgs.sysstat}/bin/sar -o ${out}/sa -A ${toString cfg.interval}";
        StandardOutput = "null";
        ExecStopPost = "${pkgs.bash}/bin/sh -c '${pkgs.sysstat}/bin/sadf -j ${out}/sa -- -A > ${out}/sa.json'";
      };
    };
  };
}
