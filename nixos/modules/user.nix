# One login user for development and test machines: ssh keys, sudo, the groups a test
# machine needs.
{ config, lib, ... }:
let
  inherit (lib) mkOption mkEnableOption types;
  cfg = config.nixboot.user;
in
{
  options.nixboot.user = {
    enable = mkEnableOption "a login user with ssh keys and sudo";

    name = mkOption {
      type = types.str;
      default = "nixboot";
      description = "Login name.";
    };

    authorizedKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "ssh public keys of the user (also given to root when {option}`nixboot.user.rootKeys`).";
    };

    rootKeys = mkOption {
      type = types.bool;
      default = false;
      description = "Also authorize {option}`nixboot.user.authorizedKeys` for root.";
    };

    extraGroups = mkOption {
      type = types.listOf types.str;
      default = [ "wheel" ];
      description = "Groups of the user.";
    };

    passwordlessSudo = mkOption {
      type = types.bool;
      default = true;
      description = "Let wheel use sudo without a password (test machines have no passwords).";
    };

    initialPassword = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Console password (world-readable in the store: for throwaway machines only).";
    };
  };

  config = lib.mkIf cfg.enable {
    users.users.${cfg.name} = {
      isNormalUser = true;
      inherit (cfg) extraGroups initialPassword;
      openssh.authorizedKeys.keys = cfg.authorizedKeys;
    };
    users.users.root.openssh.authorizedKeys.keys = lib.mkIf cfg.rootKeys cfg.authorizedKeys;
    security.sudo.wheelNeedsPassword = lib.mkIf cfg.passwordlessSudo (lib.mkDefault false);
    services.openssh = {
      enable = lib.mkDefault true;
      settings.PasswordAuthentication = lib.mkDefault false;
    };
  };
}
