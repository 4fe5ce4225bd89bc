# pynfs, the NFSv4.0/4.1 server conformance suite. nixpkgs 24.05 has no package: give a
# built checkout (`./setup.py build`). By default the guest tests its own NFS server, with
# one export for pynfs.
{ config, lib, pkgs, utils, ... }:
let
  inherit (lib) mkOption types mkIf;
  suite = import ./lib.nix { inherit lib; };
  top = config.nixboot.testSuites;
  cfg = top.pynfs;
  python = pkgs.python3.withPackages (ps: [ ps.ply ]);
in
{
  imports = [ ./common.nix ];

  options.nixboot.testSuites.pynfs = suite.options {
    name = "pynfs";
    description = "pynfs, the NFSv4 server conformance tests";
  } // {
    server = mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = "The NFS server under test.";
    };
    export = mkOption {
      type = types.str;
      default = "/export/pynfs";
      description = "Its export pynfs builds its tree in (--maketree).";
    };
    versions = mkOption {
      type = types.listOf (types.enum [ "4.0" "4.1" ]);
      default = [ "4.0" "4.1" ];
      description = "Minor versions to test (nfs4.0/testserver.py, nfs4.1/testserver.py).";
    };
    tests = mkOption {
      type = types.listOf types.str;
      default = [ "all" ];
      description = "Test flags or names for testserver.py.";
    };
    localServer = mkOption {
      type = types.bool;
      default = true;
      description = "Run the NFS server in the guest, exporting {option}`nixboot.testSuites.pynfs.export` to itself.";
    };
  };

  config = mkIf cfg.enable (lib.mkMerge [
    (suite.config {
      inherit pkgs utils top cfg;
      tree = suite.treeOf cfg "";
      name = "pynfs";
      path = [ python ];
      after = lib.optional cfg.localServer "nfs-server.service";
      script = ''
        status=0
        ${lib.concatMapStrings (v: ''
          (cd "$tree/nfs${v}" && python3 ./testserver.py --json="$run/pynfs-${v}.json" --maketree --uid=0 --gid=0 \
            ${lib.escapeShellArg "${cfg.server}:${cfg.export}"} ${lib.escapeShellArgs cfg.tests}) || status=$?
        '') cfg.versions}
        exit $status
      '';
    })
    (mkIf cfg.localServer {
      services.nfs.server = {
        enable = true;
        # fsid: the export may live on the tmpfs root, which has no device number to name it.
        exports = "${cfg.export} ${cfg.server}(rw,no_root_squash,insecure,no_subtree_check,fsid=7)\n";
      };
      systemd.tmpfiles.rules = [ "d ${cfg.export} 0777 root root -" ];
    })
  ]);
}
