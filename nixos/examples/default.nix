# One example machine per mode, built from the templates' configurations. They are the
# flake's `nixosConfigurations.example-*` (so the docs can build and boot them from this
# repository) and what `checks` and nixos/tests/eval evaluate.
#
#   nixosSystem: nixpkgs.lib.nixosSystem (or an equivalent; the offline test runner wraps it)
#   modules:     this flake's nixosModules
{ nixosSystem, modules }:
let
  platform = { nixpkgs.hostPlatform = "x86_64-linux"; };

  mk = extra: nixosSystem { modules = [ modules.default platform ] ++ extra; };

  # Stand-in for a machine's hardware-configuration.nix.
  hardware = { lib, ... }: {
    fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
    fileSystems."/boot" = { device = "/dev/disk/by-label/ESP"; fsType = "vfat"; };
    swapDevices = [{ device = "/dev/disk/by-label/swap"; }];
    boot.initrd.availableKernelModules = [ "xhci_pci" "ahci" "nvme" "sd_mod" ];
    boot.loader.systemd-boot.enable = true;
    boot.loader.grub.enable = false;
    boot.loader.efi.canTouchEfiVariables = true;
  };
in
rec {
  # Imageless guest with NixOS's kernel, a login user and a shared directory.
  example-imageless = mk [
    ../templates/imageless/configuration.nix
    {
      nixboot.user = { enable = true; authorizedKeys = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleExampleExampleExampleExampleExample example" ]; };
      nixboot.mounts.shares.src = { mountPoint = "/src"; readOnly = true; };
    }
  ];

  # Imageless guest with an external kernel: modules from the host over virtiofs.
  example-imageless-external-kernel = mk [
    ../templates/imageless/configuration.nix
    {
      boot.kernel.enable = false;
      nixboot.kernel.externalImage = "/home/me/linux/arch/x86/boot/bzImage";
    }
  ];

  # Libvirt guest image with first-boot specialisation and a scratch disk.
  example-libvirt = mk [
    ../templates/libvirt/configuration.nix
    { nixboot.mounts.storage.scratch = { device = "/dev/vdc"; autoFormat = true; }; }
  ];

  # The imageless machine on real disks.
  example-baremetal = mk [
    ../templates/imageless/configuration.nix
    hardware
    ({ lib, ... }: {
      nixboot.baremetal.enable = true;
      networking.hostName = lib.mkForce "metal";
    })
  ];

  # A controller running one guest of each kind.
  example-controller = mk [
    ({ ... }: {
      nixboot.profiles.controller = { enable = true; users = [ "nixboot" ]; };
      nixboot.user.enable = true;
      nixboot.controller.guests = {
        imageless = {
          mode = "imageless";
          system = example-imageless;
          memory = 2048;
          vcpus = 2;
          shares.src = { source = "/home/nixboot/src"; readOnly = true; };
          # Scratch disks as kdevops gives them: /dev/disk/by-id/virtio-scratch{0,1}.
          disks.scratch0 = { size = "20G"; };
          disks.scratch1 = { size = "20G"; logicalBlockSize = 4096; physicalBlockSize = 4096; };
        };
        web1 = {
          mode = "libvirt";
          system = example-libvirt;
          memory = 1024;
          vcpus = 1;
          configDir = "/etc/nixboot/guests/web1";
        };
      };
      fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
      boot.loader.grub.device = "/dev/sda";
      networking.hostName = "controller";
      system.stateVersion = "24.05";
    })
  ];
}
