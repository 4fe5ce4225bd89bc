# What every nixboot.testSuites.<name> module shares: its common options, its systemd unit
# nixboot-testsuite-<name> (oneshot; one run per start, results in
# <resultsDir>/<name>/<UTC time>/ with `log` and `exit-status`, and `latest` pointing at the
# last run), the command of the same name that starts it and prints where the results
# are, and the assertion that the suite comes from somewhere.
{ lib }:
let
  inherit (lib) mkOption mkEnableOption types literalExpression;
in
rec {
  # name: the suite; description: what it is; package/packageText: nixpkgs 24.05's package
  # (null when it has none); tree: the suite is a directory tree (checkout or install) run
  # in place, found under `packageTree` inside the package.
  options = { name, description, package ? null, packageText ? null, tree ? true, packageTree ? "" }: {
    enable = mkEnableOption "${description}, run by nixboot-testsuite-${name}.service";

    package = mkOption {
      type = types.nullOr types.package;
      default = package;
      defaultText = if packageText != null then literalExpression packageText else null;
      description =
        if package != null then "The ${name} package."
        else ''
          A derivation of ${name} (nixpkgs 24.05 has none)${lib.optionalString tree
            ", whose output${lib.optionalString (packageTree != "") "'s ${packageTree}"} is the suite's tree"}.
          null: run it from {option}`nixboot.testSuites.${name}.directory`.
        '';
    };

    runAtBoot = mkOption {
      type = types.bool;
      default = false;
      description = "Run the suite once the guest reaches multi-user.target (otherwise: `systemctl start nixboot-testsuite-${name}` or the command of that name).";
    };

    extraPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = "More packages on the suite's PATH.";
    };
  } // lib.optionalAttrs tree {
    directory = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/src/${name}";
      description = ''
        The suite's built tree in the guest (for instance a checkout built on the host,
        shared with nixboot.mounts.shares). It is run through a directory of symlinks in the
        run's results directory, so the tree itself may be read-only. null: the package's
        tree${lib.optionalString (packageTree != "") " (`<package>${packageTree}`)"}.
      '';
    };
  };

  # The directory a tree suite runs from (null: none, an assertion says so).
  treeOf = cfg: packageTree:
    if cfg.directory or null != null then cfg.directory
    else if cfg.package != null then "${cfg.package}${packageTree}"
    else null;

  # The config every suite gets. `script` runs in the run's directory with $run set to it
  # (and $tree, a symlink farm of the suite's tree, for tree suites).
  config = { pkgs, utils, top, name, cfg, path, script, devices ? [ ], tree ? null, treeSuite ? true, after ? [ ] }:
    let
      base = "${top.resultsDir}/${name}";
      unit = "nixboot-testsuite-${name}";
      deviceUnits = map (d: "${utils.escapeSystemdPath d}.device") devices;
      command = pkgs.writeShellScriptBin unit ''
        systemctl start ${unit}.service
        status=$?
        echo "${unit}: $(systemctl show -P Result ${unit}.service), results in $(readlink -f ${base}/latest)"
        exit $status
      '';
    in
    {
      assertions = lib.optional treeSuite {
        assertion = tree != null;
        message = "nixboot.testSuites.${name}: nixpkgs 24.05 has no ${name} package: set nixboot.testSuites.${name}.package (a derivation of yours) or .directory (a built ${name} tree in the guest, e.g. a share from the host).";
      };

      environment.systemPackages = [ command ];

      systemd.services.${unit} = {
        description = "nixboot: run ${name}, results in ${base}";
        wantedBy = lib.optional cfg.runAtBoot "multi-user.target";
        after = [ "multi-user.target" "network-online.target" ] ++ deviceUnits ++ after;
        wants = [ "network-online.target" ];
        requires = deviceUnits;
        unitConfig.RequiresMountsFor = [ top.resultsDir ];
        path = path ++ cfg.extraPackages ++ [ pkgs.coreutils pkgs.util-linux pkgs.gnugrep pkgs.gnused pkgs.gawk pkgs.findutils pkgs.bash pkgs.kmod ];
        environment.NIXBOOT_TESTSUITE = name;
        serviceConfig = {
          Type = "oneshot";
          TimeoutStartSec = "infinity";
          StandardOutput = "journal+console";
        };
        script = ''
          set -uo pipefail
          run=${base}/$(date -u +%Y%m%dT%H%M%SZ)
          mkdir -p "$run"
          ln -sfn "$(basename "$run")" ${base}/latest.tmp && mv -fT ${base}/latest.tmp ${base}/latest
          echo "${unit}: results in $run"
          ${lib.optionalString (tree != null) ''
            # The tree may be read-only (store, share): run it through symlinks.
            tree="$run/tree"
            mkdir -p "$tree"
            for f in ${lib.escapeShellArg tree}/*; do ln -s "$f" "$tree/"; done
          ''}
          (
            set -euo pipefail
            cd "$run"
            ${script}
          ) 2>&1 | tee "$run/log"
          status=''${PIPESTATUS[0]}
          echo "$status" > "$run/exit-status"
          echo "${unit}: exit status $status"
          exit "$status"
        '';
      };
    };

  # `mkfs.<fs>` with the flag that overwrites an existing filesystem, when the device does
  # not already hold <fs>.
  formatIfNeeded = fsType: mkfsOptions: dev:
    let force = { xfs = "-f"; btrfs = "-f"; f2fs = "-f"; ext2 = "-F"; ext3 = "-F"; ext4 = "-F"; }.${fsType} or ""; in ''
      if [ "$(blkid -p -s TYPE -o value ${lib.escapeShellArg dev} 2>/dev/null || true)" != ${lib.escapeShellArg fsType} ]; then
        mkfs.${fsType} ${force} ${mkfsOptions} ${lib.escapeShellArg dev}
      fi
    '';
}
