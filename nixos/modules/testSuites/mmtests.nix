# mmtests, the memory management benchmark harness. nixpkgs 24.05 has no package: give a
# checkout. It downloads its benchmarks itself when a config first runs them (network or
# an mmtests mirror).
{ config, lib, pkgs, utils, ... }:
let
  inherit (lib) mkOption types mkIf;
  suite = import ./lib.nix { inherit lib; };
  top = config.nixboot.testSuites;
  cfg = top.mmtests;
in
{
  imports = [ ./common.nix ];

  options.nixboot.testSuites.mmtests = suite.options {
    name = "mmtests";
    description = "mmtests, the memory management benchmarks";
  } // {
    config = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "config-workload-stream-single";
      description = "The configuration under configs/ to run (`run-mmtests.sh --config`).";
    };
    runName = mkOption {
      type = types.str;
      default = "nixboot";
      description = "The run's name (results under work/log/<name>).";
    };
  };

  config = mkIf cfg.enable (lib.mkMerge [
    (suite.config {
      inherit pkgs utils top cfg;
      tree = suite.treeOf cfg "";
      name = "mmtests";
      path = with pkgs; [ perl python3 gnumake gcc wget curl bzip2 xz gzip procps psmisc numactl sysstat ];
      script = ''
        cd "$tree"
        status=0
        ./run-mmtests.sh --no-monitor --config configs/${lib.escapeShellArg (toString cfg.config)} ${lib.escapeShellArg cfg.runName} || status=$?
        cp -a work/log "$run/log-mmtests" || true
        exit $status
      '';
    })
    {
      assertions = [{
        assertion = cfg.config != null;
        message = "nixboot.testSuites.mmtests: set config, the mmtests configuration to run (a file under the checkout's configs/).";
      }];
    }
  ]);
}
