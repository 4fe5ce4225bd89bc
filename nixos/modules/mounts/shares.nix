# Host directories shared into a guest over virtiofs, mounted at boot (nofail: a missing
# share does not stop the boot). The host side is the controller's
# `nixboot.controller.guests.<name>.shares.<tag>` (or the launcher's own options).
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.nixboot.mounts.shares;
  reserved = lib.attrNames config.nixboot.internal.virtiofs;
  tags = lib.mapAttrsToList (_: s: s.tag) cfg;
in
{
  imports = [ ../core.nix ];

  options.nixboot.mounts.shares = mkOption {
    default = { };
    example = lib.literalExpression ''{ src = { mountPoint = "/src"; }; results.readOnly = false; }'';
    description = "virtiofs shares to mount, by name.";
    type = types.attrsOf (types.submodule ({ name, ... }: {
      options = {
        tag = mkOption {
          type = types.str;
          default = name;
          description = "virtiofs tag the host exports the directory under.";
        };
        mountPoint = mkOption {
          type = types.str;
          default = "/mnt/${name}";
          description = "Where the share is mounted in the guest.";
        };
        readOnly = mkOption {
          type = types.bool;
          default = false;
          description = "Mount read-only.";
        };
        options = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Extra mount options.";
        };
      };
    }));
  };

  config = lib.mkIf (cfg != { }) {
    fileSystems = lib.mapAttrs' (_: s: lib.nameValuePair s.mountPoint {
      device = s.tag;
      fsType = "virtiofs";
      options = [ "nofail" ] ++ lib.optional s.readOnly "ro" ++ s.options;
    }) cfg;

    assertions = [
      {
        assertion = lib.length (lib.unique tags) == lib.length tags;
        message = "nixboot.mounts.shares: two shares use the same virtiofs tag.";
      }
      {
        assertion = lib.all (t: !builtins.elem t reserved) tags;
        message = "nixboot.mounts.shares: the tags ${lib.concatStringsSep ", " reserved} belong to the backend (store/modules).";
      }
    ];
  };
}
