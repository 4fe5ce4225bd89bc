# sshd for the controller, with a host key that survives reboots. An imageless guest's
# root is a tmpfs, so a key sshd generates at boot is new every boot. Instead the
# controller keeps one key per guest on the host (/var/lib/nixboot/guests/<name>/ssh,
# made by nixboot.controller.guests.<name>.ssh) and shares that directory read-only over
# virtiofs, with the authorized keys it wants installed. Before sshd starts, this module
# copies them into /etc/ssh with the ownership and modes sshd insists on (the share's
# ownership depends on how virtiofsd maps ids). Without the share (a guest started by
# nixboot-qemu) the unit is skipped and sshd generates a key as usual.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf mkDefault types;
  cfg = config.nixboot.guest.ssh;
  share = cfg.controllerShare;
  hostKey = "/etc/ssh/ssh_host_ed25519_key";
  keysDir = "/etc/ssh/nixboot_authorized_keys.d";
in
{
  options.nixboot.guest.ssh = {
    enable = mkEnableOption "sshd with the host key and authorized keys the controller shares";

    controllerShare = {
      tag = mkOption {
        type = types.nullOr types.str;
        default = "nixboot-ssh";
        description = ''
          virtiofs tag of the controller's per-guest ssh directory (ssh_host_ed25519_key,
          its .pub, authorized_keys.d/<user>). null: no share, sshd's own per-boot key.
        '';
      };
      mountPoint = mkOption {
        type = types.str;
        default = "/run/nixboot/controller-ssh";
        description = "Where the share is mounted (read-only).";
      };
    };
  };

  config = mkIf cfg.enable (lib.mkMerge [
    {
      services.openssh = {
        enable = true;
        openFirewall = mkDefault true;
        settings.PasswordAuthentication = mkDefault false;
        # One key, ed25519: a second type sshd would generate anew on every boot.
        hostKeys = mkDefault [{ path = hostKey; type = "ed25519"; }];
      };
    }
    (mkIf (share.tag != null) {
      nixboot.mounts.shares.nixboot-controller-ssh = {
        inherit (share) tag mountPoint;
        readOnly = true;
      };
      services.openssh.authorizedKeysFiles = [ "${keysDir}/%u" ];

      systemd.services.nixboot-ssh-keys = {
        description = "nixboot: ssh host key and authorized keys from the controller";
        wantedBy = [ "sshd.service" ];
        before = [ "sshd.service" ];
        unitConfig = {
          RequiresMountsFor = [ share.mountPoint ];
          # No share (nofail mount failed, or not started by the controller): sshd keeps
          # its own behaviour.
          ConditionPathExists = "${share.mountPoint}/ssh_host_ed25519_key";
        };
        path = [ pkgs.coreutils ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = ''
          set -euo pipefail
          src=${lib.escapeShellArg share.mountPoint}
          install -d -m 0755 /etc/ssh
          install -m 0600 -o root -g root "$src/ssh_host_ed25519_key" ${hostKey}.tmp
          mv -f ${hostKey}.tmp ${hostKey}
          install -m 0644 -o root -g root "$src/ssh_host_ed25519_key.pub" ${hostKey}.pub
          rm -rf ${keysDir}.tmp
          install -d -m 0755 ${keysDir}.tmp
          if [ -d "$src/authorized_keys.d" ]; then
            for f in "$src"/authorized_keys.d/*; do
              [ -f "$f" ] && install -m 0644 -o root -g root "$f" ${keysDir}.tmp/"$(basename "$f")"
            done
          fi
          rm -rf ${keysDir}
          mv ${keysDir}.tmp ${keysDir}
        '';
      };
    })
  ]);
}
