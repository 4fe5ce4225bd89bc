# gitr: git's own test suite run on the filesystem under test (as kdevops' gitr workflow
# does): the guest's first extra disk is formatted and mounted, a built git tree is copied
# onto it and `make test` runs there. nixpkgs 24.05 has no such package: give a built git
# checkout (or a derivation whose output is one).
{ config, lib, pkgs, utils, ... }:
let
  inherit (lib) mkOption types mkIf;
  suite = import ./lib.nix { inherit lib; };
  top = config.nixboot.testSuites;
  cfg = top.gitr;
  disks = config.nixboot.guest.diskPaths;
in
{
  imports = [ ./common.nix ];

  options.nixboot.testSuites.gitr = suite.options {
    name = "gitr";
    description = "gitr, git's test suite on the filesystem under test";
  } // {
    device = mkOption {
      type = types.nullOr types.str;
      default = if disks != [ ] then lib.head disks else null;
      defaultText = lib.literalExpression "the first of nixboot.guest.diskPaths";
      description = "The device git's tests run on (formatted with fsType when it holds another).";
    };
    fsType = mkOption {
      type = types.str;
      default = "xfs";
      description = "The filesystem under test.";
    };
    mountPoint = mkOption {
      type = types.str;
      default = "/mnt/gitr";
      description = "Where the device is mounted.";
    };
    jobs = mkOption {
      type = types.ints.unsigned;
      default = 0;
      description = "make -j (0: one per CPU).";
    };
  };

  config = mkIf cfg.enable (lib.mkMerge [
    (suite.config {
      inherit pkgs utils top cfg;
      tree = suite.treeOf cfg "";
      name = "gitr";
      devices = lib.optional (cfg.device != null) cfg.device;
      path = with pkgs; [ gnumake gcc perl python3 xfsprogs e2fsprogs btrfs-progs gettext openssl zlib curl ];
      script = ''
        ${suite.formatIfNeeded cfg.fsType "" (toString cfg.device)}
        mkdir -p ${cfg.mountPoint}
        mountpoint -q ${cfg.mountPoint} || mount ${lib.escapeShellArg (toString cfg.device)} ${cfg.mountPoint}
        rm -rf ${cfg.mountPoint}/git
        cp -a "$(readlink -f "$tree/Makefile" | xargs dirname)" ${cfg.mountPoint}/git
        jobs=${toString cfg.jobs}
        [ "$jobs" != 0 ] || jobs=$(nproc)
        status=0
        make -C ${cfg.mountPoint}/git/t -k -j"$jobs" GIT_TEST_OPTS=--verbose-log || status=$?
        cp -a ${cfg.mountPoint}/git/t/test-results "$run/test-results" || true
        exit $status
      '';
    })
    {
      assertions = [{
        assertion = cfg.device != null;
        message = "nixboot.testSuites.gitr needs a disk for the filesystem under test: name one in nixboot.guest.disks or set device.";
      }];
    }
  ]);
}
