# A verified disk (docs/modes/verified.md): the system's closure as a dm-verity store image
# in slot A of a GPT disk, a UKI on its ESP booting it with /nix/store on dm-verity, slot B
# left for the next generation. The disk is made by nixos/make-verified-disk.sh:
#
#   system.build.nixbootVerifiedDisk     the disk, UNSIGNED, built by Nix (no keys in the
#                                        store): its UKI's .cmdline gets the root hash when
#                                        the builder runs the script (no IFD)
#   system.build.nixbootVerifiedInstall  a command that writes the same disk SIGNED with the
#                                        keys at nixboot.verified.signing.*, read when it runs
#                                        (outside the store, as lanzaboote signs at install)
#
# The root is a tmpfs unless the configuration mounts one; /nix/store is the verity device
# the init sets up (/dev/mapper/nixboot-store, erofs, read-only), so nix cannot add paths.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types;
  cfg = config.nixboot.verified;
  toplevel = config.system.build.toplevel;
  kernel = "${config.system.build.kernel}/${config.system.boot.loader.kernelFile}";
  closure = pkgs.closureInfo { rootPaths = [ toplevel ]; };
  script = ../make-verified-disk.sh;

  # The script's arguments but --output and the keys; the disk and the installer share them.
  args = [
    "--closure" "${toplevel}"
    "--store-paths" "${closure}/store-paths"
    "--kernel" kernel
    # nixpkgs' systemd builds the stub on x86_64 (systemd-boot's own package).
    "--stub" "${config.systemd.package}/lib/systemd/boot/efi/linuxx64.efi.stub"
    "--init" "${config.nixboot.packages.init}/bin/init"
    # The kernel's modules, as nixboot's own initrd takes them (nixboot.initrd.modulesDir).
    "--kernel-modules" "${config.nixboot.initrd.modulesDir}"
    "--disk-id" cfg.diskId
    "--esp-size" (toString cfg.espSize)
    "--slot" cfg.slot
  ] ++ lib.optionals (cfg.slotSize != null) [ "--slot-size" (toString cfg.slotSize) ]
    ++ lib.concatMap (m: [ "--module" m ]) (lib.unique cfg.initrdModules);

  tools = with pkgs; [ config.nixboot.packages.mkinitrd erofs-utils util-linux dosfstools mtools coreutils gnused ];

  disk = pkgs.runCommand "nixboot-verified-disk-${config.system.name}"
    {
      nativeBuildInputs = tools;
      passthru = { inherit args closure; };
    } ''
    mkdir -p $out
    bash ${script} ${lib.escapeShellArgs args} --output $out/disk.img > $out/report
  '';

  signing = cfg.signing;
  install = pkgs.writeShellScriptBin "nixboot-verified-install" ''
    # usage: nixboot-verified-install DISK-IMAGE
    # Writes the disk with its UKI signed by ${toString signing.keyFile} (read now, not stored).
    set -eu
    [ $# -eq 1 ] || { echo "usage: $0 DISK-IMAGE" >&2; exit 2; }
    export PATH=${lib.makeBinPath (tools ++ [ pkgs.osslsigncode pkgs.sbsigntool pkgs.openssl ])}:$PATH
    exec bash ${script} ${lib.escapeShellArgs args} ${lib.optionalString (signing.keyFile != null)
      (lib.escapeShellArgs [ "--key" signing.keyFile "--cert" signing.certFile ])} --output "$1"
  '';

  inStore = p: p != null && lib.hasPrefix builtins.storeDir p;
in
{
  imports = [ ./core.nix ];

  options.nixboot.verified = {
    enable = mkEnableOption ''
      a verified disk: the closure as a dm-verity store (slot A of an A/B pair) booted by a
      unified kernel image, signed for Secure Boot by system.build.nixbootVerifiedInstall'';

    diskId = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      description = "Seed of the disk's and its partitions' GUIDs (PARTUUIDs): the same id gives the same GUIDs, so a new generation for slot B knows B's PARTUUID.";
    };

    slot = mkOption {
      type = types.enum [ "A" "B" ];
      default = "A";
      description = "The slot this generation's store image goes to and its UKI boots (the next generation takes the other).";
    };

    espSize = mkOption {
      type = types.ints.positive;
      default = 256;
      description = "Size of the ESP in MiB (it holds the UKI: kernel, initrd, command line).";
    };

    slotSize = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Size of each store slot in MiB; null: the store image's size plus 25 %, at least 64 (then the next generation must fit that).";
    };

    initrdModules = mkOption {
      type = types.listOf types.str;
      default = [ "ahci" "nvme" "sd_mod" "virtio_pci" "virtio_blk" "virtio_scsi" "dm-verity" "erofs" ];
      description = "Kernel modules the UKI's initrd carries to find the disk and set up the verity store (mkinitrd adds their dependencies).";
    };

    signing = {
      keyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/sbctl/keys/db/db.key";
        description = "Private key (PEM) that signs the UKI, as a path string outside the Nix store: read by the install command when it runs, never copied into the store. null: unsigned.";
      };
      certFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/sbctl/keys/db/db.pem";
        description = "Its certificate (PEM), enrolled in the firmware's db.";
      };
    };
  };

  config = mkIf cfg.enable {
    nixboot.initrd.enable = true;
    nixboot.internal.physical = true;
    nixboot.internal.backends = [ "verified" ];
    fileSystems."/" = lib.mkDefault { device = "tmpfs"; fsType = "tmpfs"; options = [ "mode=0755" ]; };
    fileSystems."/nix/store" = { device = "/dev/mapper/nixboot-store"; fsType = "erofs"; options = [ "ro" ]; };
    boot.kernelParams = [ "root=tmpfs" "nixboot.modules=none" ];
    # The firmware boots the UKI at EFI/BOOT/BOOTX64.EFI: no boot loader to install.
    boot.loader.grub.enable = lib.mkDefault false;
    # The store is read-only: nix cannot add paths.
    nix.enable = lib.mkDefault false;
    system.build.nixbootVerifiedDisk = disk;
    system.build.nixbootVerifiedInstall = install;
    assertions = [
      {
        assertion = config.boot.kernel.enable;
        message = "nixboot: a verified disk needs a real kernel (its UKI's .linux): boot.kernel.enable must be true.";
      }
      {
        assertion = (signing.keyFile == null) == (signing.certFile == null);
        message = "nixboot: nixboot.verified.signing.keyFile and certFile go together (both or neither).";
      }
      {
        assertion = !(inStore signing.keyFile) && !(inStore signing.certFile);
        message = "nixboot: nixboot.verified.signing.* must be outside the Nix store (a key there is world-readable).";
      }
    ];
  };
}
