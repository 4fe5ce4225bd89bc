# Boot counting and automatic rollback for systemd-boot (Boot Loader Specification,
# "Automatic Boot Assessment"): each new generation's entry is written as
# `nixos-generation-N+TRIES.conf`; systemd-boot decrements the counter on every try and
# sorts an exhausted entry last, so after TRIES failed boots the previous generation
# boots. A boot that reaches `nixboot-boot-health.target` is healthy:
# `nixboot-bless-boot.service` renames its entry to `nixos-generation-N.conf`, which ends
# its counting. Health checks are units `requiredBy` that target (option `healthChecks`).
#
# `nixboot-kexec` (option kexecTool): boots another generation through kexec from its
# boot.json, without the firmware (`nixboot-kexec 42 && systemctl kexec`).
# See docs/modes/verified.md.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkEnableOption mkIf mkOption types;

  cfg = config.nixboot.bootCounting;
  kexecTool = pkgs.runCommand "nixboot-kexec" { meta.mainProgram = "nixboot-kexec"; } ''
    mkdir -p $out/bin
    ln -s ${config.nixboot.packages.init}/bin/nixboot-kexec $out/bin/nixboot-kexec
  '';
  esp = config.boot.loader.efi.efiSysMountPoint;

  installHook = pkgs.writeShellScript "nixboot-boot-counting-install" ''
    export PATH=${lib.makeBinPath [ pkgs.coreutils pkgs.gnused pkgs.gnugrep ]}
    export ESP=${lib.escapeShellArg esp} TRIES=${toString cfg.tries}
    ${builtins.readFile ./install-hook.sh}
  '';
in
{
  imports = [ ../core.nix ];

  options.nixboot.kexecTool.enable = mkEnableOption ''
    `nixboot-kexec GENERATION|TOPLEVEL|BOOT_JSON`: load another generation's kernel, initrd
    and command line from its boot.json (then `systemctl kexec`, or `--now`)'';

  options.nixboot.bootCounting = {
    enable = mkEnableOption ''
      boot counting for systemd-boot: new generations get `+TRIES` entries, an unhealthy
      one falls back to the previous generation after its tries, a healthy boot (reaching
      nixboot-boot-health.target) blesses its entry'';

    tries = mkOption {
      type = types.ints.positive;
      default = 3;
      description = ''
        Boots a new generation gets to reach nixboot-boot-health.target before systemd-boot
        prefers the previous one (the `+TRIES` of its entry's file name).
      '';
    };

    healthChecks = mkOption {
      type = types.listOf types.str;
      default = [ "multi-user.target" ];
      example = [ "multi-user.target" "sshd.service" "my-app-selftest.service" ];
      description = ''
        Units nixboot-boot-health.target requires and is ordered after: a boot is healthy,
        and its entry blessed, only once all of them are active. A check can also declare
        `requiredBy = [ "nixboot-boot-health.target" ]` itself.
      '';
    };
  };

  config = lib.mkMerge [
    (mkIf config.nixboot.kexecTool.enable {
      environment.systemPackages = [ kexecTool ];
    })
    (mkIf cfg.enable {
      assertions = [
        {
          assertion = config.boot.loader.systemd-boot.enable;
          message = "nixboot.bootCounting needs systemd-boot (boot.loader.systemd-boot.enable).";
        }
      ];

      boot.loader.systemd-boot.extraInstallCommands = "${installHook}";

      systemd.targets.nixboot-boot-health = {
        description = "nixboot: this generation is healthy";
        wantedBy = [ "multi-user.target" ];
        requires = cfg.healthChecks;
        after = cfg.healthChecks;
      };

      systemd.services.nixboot-bless-boot = {
        description = "nixboot: mark the booted boot loader entry good";
        wantedBy = [ "nixboot-boot-health.target" ];
        requires = [ "nixboot-boot-health.target" ];
        after = [ "nixboot-boot-health.target" ];
        unitConfig.RequiresMountsFor = [ esp ];
        path = [ pkgs.coreutils pkgs.gnused ];
        environment.ESP = esp;
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = builtins.readFile ./bless-boot.sh;
      };
    })
  ];
}
