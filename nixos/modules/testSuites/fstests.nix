# fstests (xfstests-dev): nixpkgs 24.05's xfstests, configured from the guest's first two
# extra disks (TEST_DEV, SCRATCH_DEV) in /etc/xfstests/local.config (HOST_OPTIONS), with the
# users its tests expect (fsgqa, fsgqa2, 123456-fsgqa).
{ config, lib, pkgs, utils, ... }:
let
  inherit (lib) mkOption types mkIf;
  suite = import ./lib.nix { inherit lib; };
  top = config.nixboot.testSuites;
  cfg = top.fstests;
  disks = config.nixboot.guest.diskPaths;
  packageTree = "/lib/xfstests";
  tree = suite.treeOf cfg packageTree;
  configFile = "/etc/xfstests/local.config";

  localConfig = ''
    # nixboot.testSuites.fstests
    export FSTYP=${cfg.fsType}
    export TEST_DEV=${toString cfg.testDev}
    export TEST_DIR=${cfg.testDir}
    export SCRATCH_DEV=${toString cfg.scratchDev}
    export SCRATCH_MNT=${cfg.scratchMnt}
    export MKFS_OPTIONS=${lib.escapeShellArg cfg.mkfsOptions}
    export MOUNT_OPTIONS=${lib.escapeShellArg cfg.mountOptions}
    ${cfg.extraConfig}
  '';
in
{
  imports = [ ./common.nix ];

  options.nixboot.testSuites.fstests = suite.options {
    name = "fstests";
    description = "fstests (xfstests), the filesystem regression suite";
    package = pkgs.xfstests;
    packageText = "pkgs.xfstests";
    inherit packageTree;
  } // {
    fsType = mkOption {
      type = types.str;
      default = "xfs";
      example = "btrfs";
      description = "The filesystem under test (FSTYP); TEST_DEV is formatted with it when it holds another.";
    };
    testDev = mkOption {
      type = types.nullOr types.str;
      default = if disks != [ ] then lib.head disks else null;
      defaultText = lib.literalExpression "the first of nixboot.guest.diskPaths";
      description = "TEST_DEV.";
    };
    scratchDev = mkOption {
      type = types.nullOr types.str;
      default = if lib.length disks >= 2 then lib.elemAt disks 1 else null;
      defaultText = lib.literalExpression "the second of nixboot.guest.diskPaths";
      description = "SCRATCH_DEV.";
    };
    testDir = mkOption {
      type = types.str;
      default = "/mnt/test";
      description = "TEST_DIR.";
    };
    scratchMnt = mkOption {
      type = types.str;
      default = "/mnt/scratch";
      description = "SCRATCH_MNT.";
    };
    mkfsOptions = mkOption {
      type = types.str;
      default = "";
      description = "MKFS_OPTIONS.";
    };
    mountOptions = mkOption {
      type = types.str;
      default = "";
      description = "MOUNT_OPTIONS.";
    };
    extraConfig = mkOption {
      type = types.lines;
      default = "";
      description = "More lines of local.config.";
    };
    tests = mkOption {
      type = types.listOf types.str;
      default = [ "-g" "quick" ];
      example = [ "generic/001" "xfs/001" ];
      description = "Arguments of `./check`: groups, tests, exclusions.";
    };
  };

  config = mkIf cfg.enable (lib.mkMerge [
    (suite.config {
      inherit pkgs utils top tree;
      name = "fstests";
      inherit cfg;
      devices = lib.filter (d: d != null) [ cfg.testDev cfg.scratchDev ];
      path = with pkgs; [
        xfsprogs e2fsprogs btrfs-progs f2fs-tools xfsdump attr acl quota fio dbench
        lvm2 keyutils libcap bc perl psmisc which procps duperemove fsverity-utils
      ];
      script = ''
        ${suite.formatIfNeeded cfg.fsType cfg.mkfsOptions (toString cfg.testDev)}
        export HOST_OPTIONS=${configFile}
        export RESULT_BASE="$run/results"
        cd "$tree"
        ./check ${lib.escapeShellArgs cfg.tests}
      '';
    })
    {
      assertions = [
        {
          assertion = cfg.testDev != null && cfg.scratchDev != null;
          message = "nixboot.testSuites.fstests needs two disks (TEST_DEV and SCRATCH_DEV) but the guest names ${toString (lib.length disks)} in nixboot.guest.disks: give the guest two extra disks (the controller's nixboot.controller.guests.<name>.disks) and name their serials in nixboot.guest.disks, or set testDev and scratchDev.";
        }
        {
          assertion = cfg.testDev == null || cfg.testDev != cfg.scratchDev;
          message = "nixboot.testSuites.fstests: testDev and scratchDev are the same device (${toString cfg.testDev}); SCRATCH_DEV is reformatted by the tests.";
        }
      ];

      environment.etc."xfstests/local.config".text = localConfig;
      environment.systemPackages = lib.optional (cfg.package != null) cfg.package;
      systemd.tmpfiles.rules = [ "d ${cfg.testDir} 0755 root root -" "d ${cfg.scratchMnt} 0755 root root -" ];

      # The unprivileged users and groups fstests' tests switch to.
      users.groups = { fsgqa = { }; fsgqa2 = { }; "123456-fsgqa" = { }; };
      users.users = {
        fsgqa = { isSystemUser = true; group = "fsgqa"; useDefaultShell = true; };
        fsgqa2 = { isSystemUser = true; group = "fsgqa2"; useDefaultShell = true; };
        # generic/381 wants this uid.
        "123456-fsgqa" = { isSystemUser = true; uid = 123456; group = "123456-fsgqa"; useDefaultShell = true; };
      };
    }
  ]);
}
