# The flake's `nixosModules`. Each module can be imported alone (each imports core.nix, which
# the module system imports only once); `default` imports them all.
{
  backends = {
    imageless = ./backends/imageless.nix;
    libvirt = ./backends/libvirt.nix;
  };
  baremetal = ./baremetal;
  profiles = {
    controller = ./profiles/controller.nix;
  };
  user = ./user.nix;
  verified = ./verified.nix;
  mounts = {
    shares = ./mounts/shares.nix;
    storage = ./mounts/storage.nix;
  };
  default = ./default.nix;
}
