{
  description = "An imageless NixOS guest: tmpfs root, /nix/store from the host over virtiofs, booted by nixboot";

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

    # `nix build` -> result/boot.json (kernel, nixboot's initrd, init, kernel parameters);
    # boot it with: nix run nixboot#nixboot-qemu -- --boot-json result/boot.json
    packages.x86_64-linux.default = self.nixosConfigurations.guest.config.system.build.toplevel;
  };
}
