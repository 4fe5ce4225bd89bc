{
  description = "A NixOS libvirt guest: qcow2 image, ext4 root on /dev/vda1, grub, booted through nixboot's initrd";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";
    # Where you got nixboot from (a local checkout works too: "path:/home/me/nixboot").
    nixboot.url = "git+https://example.invalid/nixboot";
    nixboot.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs = { self, nixpkgs, nixboot }: {
    nixosConfigurations.guest = nixpkgs.lib.nixosSystem {
      modules = [
        nixboot.nixosModules.default
        ./configuration.nix
        { nixpkgs.hostPlatform = "x86_64-linux"; }
      ];
    };

    # `nix build` -> result/nixos.qcow2, the read-only backing file of your VMs' overlays.
    packages.x86_64-linux.default = self.nixosConfigurations.guest.config.system.build.nixbootImage;
  };
}
