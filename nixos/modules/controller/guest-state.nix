# Per-guest state the controller keeps on the host, under
# /var/lib/nixboot/guests/<name> (nixboot.controller.stateDir), and shares into the guest:
#
#   ssh/      the guest's ssh host key (made once, so it is stable across the guest's boots
#             even with a tmpfs root) and authorized_keys.d/<user>; shared read-only as
#             tag nixboot-ssh, consumed by nixboot.guest.ssh. known_hosts beside it holds the
#             public key under the alias nixboot-guest-<name>, and ssh on the controller is
#             configured to use it for `ssh <name>`.
#   results/  shared read-write as tag results, where nixboot.testSuites write.
#
# Declared as an extension of nixboot.controller.guests (submodules merge), so that the
# domain XML (controller/domain.nix) sees the extra shares like any other.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types;
  cfg = config.nixboot.controller;

  guestDir = name: "${cfg.stateDir}/guests/${name}";
  alias = name: "nixboot-guest-${name}";

  guestModule = { name, config, ... }: {
    options = {
      ssh = {
        enable = mkEnableOption ''
          a stable ssh host key for this guest and the authorized keys below, shared
          read-only with the guest (it needs nixboot.guest.ssh)'';
        tag = mkOption {
          type = types.str;
          default = "nixboot-ssh";
          description = "virtiofs tag of the share (nixboot.guest.ssh.controllerShare.tag in the guest).";
        };
        authorizedKeys = mkOption {
          type = types.attrsOf (types.listOf types.str);
          default = { };
          example = { root = [ "ssh-ed25519 AAAA... kdevops@controller" ]; };
          description = "Public keys allowed to log in, by guest user.";
        };
      };

      results = {
        enable = mkEnableOption "a results directory on the host, shared read-write with the guest";
        tag = mkOption {
          type = types.str;
          default = "results";
          description = "virtiofs tag of the share (nixboot.testSuites.resultsShare in the guest).";
        };
        directory = mkOption {
          type = types.str;
          default = "${guestDir name}/results";
          defaultText = lib.literalExpression ''"''${nixboot.controller.stateDir}/guests/<name>/results"'';
          description = "Host directory the guest's test suites write to.";
        };
      };
    };

    config.shares = lib.mkMerge [
      (mkIf config.ssh.enable { ${config.ssh.tag} = { source = "${guestDir name}/ssh"; readOnly = true; }; })
      (mkIf config.results.enable { ${config.results.tag} = { source = config.results.directory; readOnly = false; }; })
    ];
  };

  keysFile = user: keys: pkgs.writeText "nixboot-authorized-keys-${user}" (lib.concatMapStrings (k: "${k}\n") keys);

  # Runs before the guest's unit defines the domain: virtiofsd needs the directories. The
  # key is readable by the group of the controller's own virtiofsd (when it has one), which
  # serves read-only shares; the guest copies it with sshd's modes.
  prepare = name: guest: lib.optionalString guest.ssh.enable ''
    dir=${lib.escapeShellArg "${guestDir name}/ssh"}
    install -d -m 0750 -g ${keyGroup} "$dir"
    if [ ! -s "$dir/ssh_host_ed25519_key" ]; then
      rm -f "$dir/ssh_host_ed25519_key" "$dir/ssh_host_ed25519_key.pub"
      ssh-keygen -q -t ed25519 -N "" -C ${lib.escapeShellArg (alias name)} -f "$dir/ssh_host_ed25519_key"
    fi
    chgrp ${keyGroup} "$dir/ssh_host_ed25519_key"
    chmod 0640 "$dir/ssh_host_ed25519_key"
    rm -rf "$dir/authorized_keys.d.tmp"
    install -d -m 0755 "$dir/authorized_keys.d.tmp"
    ${lib.concatStrings (lib.mapAttrsToList (user: keys: ''
      install -m 0644 ${keysFile user keys} "$dir/authorized_keys.d.tmp"/${lib.escapeShellArg user}
    '') guest.ssh.authorizedKeys)}
    rm -rf "$dir/authorized_keys.d"
    mv "$dir/authorized_keys.d.tmp" "$dir/authorized_keys.d"
    printf '%s %s\n' ${lib.escapeShellArg (alias name)} "$(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")" \
      > ${lib.escapeShellArg "${guestDir name}/known_hosts"}.tmp
    mv -f ${lib.escapeShellArg "${guestDir name}/known_hosts"}.tmp ${lib.escapeShellArg "${guestDir name}/known_hosts"}
  '' + lib.optionalString guest.results.enable ''
    install -d -m 0755 ${lib.escapeShellArg guest.results.directory}
  '';

  sshGuests = lib.filterAttrs (_: g: g.ssh.enable) cfg.guests;

  # The units of a controller that serves read-only shares with its own unprivileged
  # virtiofsd (nixboot-virtiofsd-<guest>-<tag>): they must start after the directory
  # exists, and their user must be able to read the key (group below).
  shareUnits = name: guest: lib.optional guest.ssh.enable "nixboot-virtiofsd-${name}-${guest.ssh.tag}.service";
  keyGroup = if config.users.groups ? nixboot-virtiofsd then "nixboot-virtiofsd" else "root";
in
{
  imports = [ ../core.nix ../profiles/controller.nix ];

  options.nixboot.controller = {
    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/nixboot";
      description = "Host directory of the guests' persistent state (ssh keys, results), one directory per guest under guests/.";
    };

    guests = mkOption {
      type = types.attrsOf (types.submodule guestModule);
    };
  };

  config = mkIf (cfg.guests != { }) {
    # A unit of its own, before the guest's unit and before any virtiofsd unit serving
    # these shares (a controller that runs virtiofsd itself checks that the directory
    # exists when it starts).
    systemd.services = lib.mapAttrs' (name: guest: lib.nameValuePair "nixboot-guest-state-${name}" (
      mkIf (guest.system != null && (guest.ssh.enable || guest.results.enable)) {
        description = "nixboot: state of guest ${name} (ssh host key, authorized keys, results directory)";
        requiredBy = [ "nixboot-guest-${name}.service" ];
        wantedBy = shareUnits name guest;
        before = [ "nixboot-guest-${name}.service" ] ++ shareUnits name guest;
        path = [ pkgs.openssh pkgs.coreutils ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = ''
          set -euo pipefail
          ${prepare name guest}
        '';
      })) cfg.guests;

    # `ssh <name>` checks the guest's key under its alias; libvirt's NSS module resolves
    # the domain name to the address its network leased.
    programs.ssh.extraConfig = lib.concatStrings (lib.mapAttrsToList (name: _: ''
      Host ${name}
        HostKeyAlias ${alias name}
        UserKnownHostsFile ${guestDir name}/known_hosts ~/.ssh/known_hosts
    '') sshGuests) + lib.optionalString (sshGuests != { }) "Host *\n";
    virtualisation.libvirtd.nss.enableGuest = mkIf (sshGuests != { }) (lib.mkDefault true);
  };
}
